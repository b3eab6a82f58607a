"""The evaluation: the paper's experiments on the recordings, through the real graph.

Fit on train (memory, classifier), choose every threshold on validation, then touch the
test split once: single models and baselines from the recordings, router rows by running
the compiled graph over every test query.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from langgraph.graph.state import CompiledStateGraph

from emafusion.evals.baselines import Matrices, Row, choose_disagreement_pair, complete
from emafusion.evals.metrics import aiq, apgr, bootstrap_gain, cpt, hull_value, upper_hull
from emafusion.evals.readoff import read_off_row, router_row
from emafusion.graph.context import Context
from emafusion.graph.router import make_graph
from emafusion.nodes.policy import PolicySettings
from emafusion.nodes.resources import RouterResources
from emafusion.stores.artifacts import build_router_artifacts, embed_records
from emafusion.stores.embeddings import Embedder
from emafusion.stores.pool import Pool
from emafusion.stores.recordings import Record, RecordSet
from emafusion.stores.taxonomy import Taxonomy
from emafusion.train.combiner import fit_book
from emafusion.train.graph_runs import QueryResult, run_graph
from emafusion.train.traces import JudgedTraces
from emafusion.train.verifier import train_verifier

# Validation grid. Each (levels, floor, margin) cell is one graph run in which escalation
# never stops early; every threshold is then read off its judged trace through the decision
# policy (`read_off_row`), which is exactly where the graph would have stopped.
THRESHOLD_GRID = tuple(round(0.30 + 0.01 * i, 2) for i in range(70))
LEVEL_GRID = (2, 3)
FLOOR_GRID = (0.0, 0.5, 0.65)
MARGIN_GRID = (0.1, 0.3, 1.0)
# Cost weights (success probability per $ per 1k queries) for the router's trade-off curve.
COST_WEIGHTS = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
# Thresholds of the sweep; None: never stop early (the most confident of every level).
SWEEP: tuple[float | None, ...] = (0.3, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, None)
# Every offline judge; the learned combiner weighs them (see stores/combiner.py).
JUDGES = ("memory_prior", "answer_format", "agreement", "verifier")
MODES: dict[str, dict[str, Any]] = {
    # Always trust the taxonomy's top category; never consult the memory.
    "taxonomy-only": {"taxonomy_threshold": 0.0, "refine_with_memory": False},
    # Never trust the taxonomy: the learned router decides every query.
    "learned-only": {"taxonomy_threshold": 1.01},
    # The design: a confident taxonomy picks the models, the memory orders them.
    "hybrid": {},
}


@dataclass
class OperatingPoint:
    threshold: float
    max_levels: int
    min_p_success: float
    suitability_margin: float
    accuracy: float
    cost_per_1k_usd: float

    def settings(self) -> dict[str, Any]:
        return {
            "escalation_threshold": self.threshold,
            "max_levels": self.max_levels,
            "min_p_success": self.min_p_success,
            "suitability_margin": self.suitability_margin,
        }

    def describe(self) -> str:
        return (
            f"threshold {self.threshold}, max levels {self.max_levels}, floor "
            f"{self.min_p_success}, suitability margin {self.suitability_margin}"
        )


@dataclass
class Evaluation:
    records: RecordSet
    pool: Pool
    embedder: Embedder
    taxonomy: Taxonomy
    concurrency: int = 4
    limit: int | None = None
    progress: Callable[[str, int], Callable[[int], None]] | None = None
    log: Callable[[str], None] = print
    resources: RouterResources | None = None
    graph: CompiledStateGraph | None = None

    def build(self) -> RouterResources:
        self.log(
            f"fitting memory, classifier and verifier on {self.records.name} train; "
            f"calibrating the classifier on validation"
        )
        artifacts = build_router_artifacts(
            self.records,
            self.embedder,
            self.taxonomy,
            self.pool,
            splits=("train",),
            calibrate_on="validation",
        )
        self.resources = RouterResources.create(
            self.pool, artifacts, self.embedder, self.taxonomy, self.records
        )
        train = self.records.split("train")
        self.resources.verifier = train_verifier(
            train, embed_records(train, self.embedder), artifacts.memory, self.embedder.id
        )
        # The graph reads the resources at each run, so combiners fitted later are used.
        self.graph = make_graph(self.resources)
        return self.resources

    def context(self, **settings: Any) -> Context:
        settings = {"judges": JUDGES, "combiner": "learned", **settings}
        return Context(record_outcomes=False, **settings)

    @staticmethod
    def policy_settings(context: Context, threshold: float | None) -> PolicySettings:
        """The policy at `threshold` (None: never stop early) for runs under `context`."""
        base = PolicySettings.from_context(context)
        if threshold is None:
            return replace(base, stop_early=False)
        return replace(base, threshold=threshold, stop_early=True)

    async def fit_combiners(self, val_records: list[Record]) -> None:
        """One calibrated combiner per judge subset, on validation answers at every level."""
        assert self.resources is not None
        results = await self._run(
            "validation judge signals",
            val_records,
            self.context(combiner="static", stop_early=False, max_levels=3),
            keep_trace=True,
        )
        traces = JudgedTraces.from_traces(val_records, [r.trace for r in results], JUDGES)
        self.resources.combiners = fit_book(traces.signals())

    def _subset(self, records: list[Record]) -> list[Record]:
        return records[: self.limit] if self.limit else records

    async def _run(
        self, label: str, records: Sequence[Record], context: Context, keep_trace: bool = False
    ) -> list[QueryResult]:
        assert self.graph is not None, "build() first"
        tick = self.progress(label, len(records)) if self.progress else None
        return await run_graph(self.graph, records, context, self.concurrency, tick, keep_trace)

    async def validation_grid(self, val_records: list[Record]) -> list[OperatingPoint]:
        grid = []
        for levels, floor, margin in itertools.product(LEVEL_GRID, FLOOR_GRID, MARGIN_GRID):
            settings = {
                "max_levels": levels,
                "min_p_success": floor,
                "suitability_margin": margin,
                "stop_early": False,
            }
            context = self.context(**settings)
            results = await self._run(
                f"validation levels={levels} floor={floor} margin={margin}",
                val_records,
                context,
                keep_trace=True,
            )
            for threshold in THRESHOLD_GRID:
                at = self.policy_settings(context, threshold)
                row = read_off_row("validation", results, val_records, at)
                grid.append(
                    OperatingPoint(
                        threshold, levels, floor, margin, row.accuracy, row.cost_per_1k_usd
                    )
                )
        return grid

    async def choose_operating_points(
        self, val_records: list[Record], best_single: Row
    ) -> tuple[OperatingPoint, OperatingPoint, list[OperatingPoint]]:
        """Full router settings chosen on validation.

        Main: the most accurate within the best single model's cost. Cheap: the cheapest
        that matches the best single model's accuracy (else the most accurate at half its
        cost).
        """
        grid = await self.validation_grid(val_records)
        within = [p for p in grid if p.cost_per_1k_usd <= best_single.cost_per_1k_usd]
        main = max(within or grid, key=lambda p: (p.accuracy, -p.cost_per_1k_usd))
        matching = [p for p in grid if p.accuracy >= best_single.accuracy]
        if matching:
            cheap = min(matching, key=lambda p: (p.cost_per_1k_usd, -p.accuracy))
        else:
            half = [p for p in grid if p.cost_per_1k_usd <= 0.5 * best_single.cost_per_1k_usd]
            cheap = max(half or grid, key=lambda p: (p.accuracy, -p.cost_per_1k_usd))
        return main, cheap, grid

    async def run(self, split: str = "test") -> dict[str, Any]:
        if self.resources is None:
            self.build()
        pool = self.pool
        val_all = self.records.split("validation")
        val = self._subset(complete(val_all, pool))
        test_all = self._subset(self.records.split(split))
        test = complete(test_all, pool)
        self.log(
            f"{split}: {len(test_all):,} queries, {len(test):,} with every pool model recorded "
            f"(headline); validation: {len(val):,}"
        )

        # --- choices on validation ----------------------------------------------------------
        val_m = Matrices.build(val, pool)
        val_singles = val_m.single_rows()
        val_best = max(val_singles, key=lambda r: r.accuracy)
        await self.fit_combiners(val)
        main, cheap, grid = await self.choose_operating_points(val, val_best)
        best_j = pool.names.index(val_best.name)
        pair = choose_disagreement_pair(val_m, best_j, val_best.cost_per_1k_usd)
        self.log(
            f"validation: best single {val_best.name} {val_best.accuracy:.4f} at "
            f"${val_best.cost_per_1k_usd:.3f}/1k; full router: {main.describe()} "
            f"(val {main.accuracy:.4f} at ${main.cost_per_1k_usd:.3f}/1k); cheap: "
            f"{cheap.describe()} (val {cheap.accuracy:.4f} at ${cheap.cost_per_1k_usd:.3f}/1k)"
        )

        # --- test: recordings-only rows -----------------------------------------------------
        test_m = Matrices.build(test, pool)
        singles = test_m.single_rows()
        best = next(r for r in singles if r.name == val_best.name)
        rows: list[Row] = [*singles, test_m.random_row(), test_m.oracle_row()]
        correct, cost, escalated = test_m.disagreement(pair[0], pair[1], best_j)
        rows.append(
            Row(
                "disagreement baseline",
                "baseline",
                float(correct.mean()),
                1000.0 * float(cost.mean()),
                2.0 + float(escalated.mean()),
                float(escalated.mean()),
                None,
                correct,
                note=f"{pool.names[pair[0]]} + {pool.names[pair[1]]}, "
                f"escalate to {best.name} on disagreement",
            )
        )

        # --- test: router rows through the graph --------------------------------------------
        full_settings = main.settings()
        full = router_row(
            "full (validation-chosen)",
            await self._run("full router", test, self.context(**full_settings)),
            note=main.describe(),
        )
        cheap_row = router_row(
            "full (cheap)",
            await self._run("cheap operating point", test, self.context(**cheap.settings())),
            note=cheap.describe(),
        )
        ablation: list[Row] = []
        for mode, settings in MODES.items():
            for depth in (0, 1, 2, 3):
                label = f"{mode}, " + ("no cascade" if depth == 0 else f"cascade depth {depth}")
                context = self.context(**{**full_settings, **settings, "max_levels": depth + 1})
                ablation.append(router_row(label, await self._run(label, test, context)))
        rows += ablation + [full, cheap_row]

        # The paper's signal ablation: the full cascade at its chosen threshold, one judge
        # dropped at a time (the combiner of the remaining judges was fitted without it).
        signals: list[Row] = []
        for dropped in JUDGES:
            kept = tuple(j for j in JUDGES if j != dropped)
            label = f"full without {dropped}"
            context = self.context(**{**full_settings, "judges": kept})
            signals.append(router_row(label, await self._run(label, test, context)))
        rows += signals

        # One run that never stops early gives the whole threshold sweep exactly.
        never_stop_context = self.context(**{**full_settings, "stop_early": False})
        never_stop = await self._run(
            "threshold sweep", test, never_stop_context, keep_trace=True
        )
        sweep = [
            read_off_row(
                f"sweep t={_sweep_label(t)}",
                never_stop,
                test,
                self.policy_settings(never_stop_context, t),
            )
            for t in SWEEP
        ]
        # The router's cheaper operating points: a price on each point of success
        # probability makes the cascade stop at cheaper top models.
        for weight in COST_WEIGHTS:
            weighted = self.context(**{**full_settings, "stop_early": False, "cost_weight": weight})
            runs = await self._run(
                f"cost-weight sweep w={weight}", test, weighted, keep_trace=True
            )
            sweep += [
                read_off_row(
                    f"sweep w={weight} t={_sweep_label(t)}",
                    runs,
                    test,
                    self.policy_settings(weighted, t),
                )
                for t in SWEEP
            ]

        everything = router_row(
            "full (validation-chosen), all queries",
            await self._run("full router, all queries", test_all, self.context(**full_settings)),
            note="missing recordings act as provider failures; the router escalates past them",
        )
        all_singles = Matrices.build(test_all, pool).single_rows()

        return self._summary(
            split,
            test,
            test_all,
            rows,
            best,
            full,
            cheap_row,
            sweep,
            everything,
            all_singles,
            main,
            cheap,
            grid,
            test_m.recorded_cost,
        )

    def _summary(
        self,
        split: str,
        test: list[Record],
        test_all: list[Record],
        rows: list[Row],
        best: Row,
        full: Row,
        cheap: Row,
        sweep: list[Row],
        everything: Row,
        all_singles: list[Row],
        main: OperatingPoint,
        cheap_point: OperatingPoint,
        grid: list[OperatingPoint],
        recorded_cost: bool,
    ) -> dict[str, Any]:
        singles = [r for r in rows if r.kind == "single"]
        single_points = [r.point for r in singles]
        average_cost = float(np.mean([r.cost_per_1k_usd for r in singles]))
        gain, low, high = bootstrap_gain(full.correct, best.correct)
        cheap_gain = bootstrap_gain(cheap.correct, best.correct)
        weak = min(singles, key=lambda r: (r.cost_per_1k_usd, -r.accuracy))
        router_points = [r.point for r in sweep] + [full.point, cheap.point]
        hull = upper_hull(single_points)
        metrics = {
            "gain_over_best_single": {"mean": gain, "ci95": [low, high]},
            "cheap_gain_over_best_single": {"mean": cheap_gain[0], "ci95": list(cheap_gain[1:])},
            "cost_ratio_vs_best_single": full.cost_per_1k_usd / best.cost_per_1k_usd,
            "cheap_cost_ratio_vs_best_single": cheap.cost_per_1k_usd / best.cost_per_1k_usd,
            "cost_ratio_vs_average_model": full.cost_per_1k_usd / average_cost,
            "apgr": apgr(router_points, weak.point, best.point),
            "cpt50": cpt(router_points, weak.point, best.point, 0.5),
            "aiq_router": aiq(router_points, single_points),
            "aiq_zero_router": aiq(single_points, single_points),
            "zero_router_hull_at_full_cost": hull_value(hull, full.cost_per_1k_usd),
            "weak_model": weak.name,
            "strong_model": best.name,
            "definitions": {
                "apgr_cpt": "RouteLLM's, on normalized cost (cost - weak) / (strong - weak) "
                "in place of the share of calls to the strong model",
                "aiq": "RouterBench's, mean of the non-decreasing concave hull over the single "
                "models' cost range, cost in USD per 1k queries",
            },
        }
        cost_label = "recorded USD" if recorded_cost else "list prices x estimated tokens (USD)"
        return {
            "dataset": self.records.name,
            "split": split,
            "population": "test queries with a recording from every pool model",
            "n": len(test),
            "n_all_queries": len(test_all),
            "cost_basis": cost_label,
            "best_single": best.name,
            "concurrency": self.concurrency,
            "validation_choice": {
                "full": main.__dict__,
                "cheap": cheap_point.__dict__,
                "grid_size": len(grid),
            },
            "rows": [r.as_json() for r in rows],
            "all_queries": {
                "population": "every test query; a missing recording is a provider failure "
                "(the router escalates past it; a single-model row counts it wrong)",
                "rows": [r.as_json() for r in [*all_singles, everything]],
            },
            "sweep": [r.as_json() for r in sweep],
            "metrics": metrics,
        }


def _sweep_label(threshold: float | None) -> str:
    # "1.01" has named the never-stop point in every published table: keep it.
    return "1.01" if threshold is None else str(threshold)


def limit_records(records: RecordSet, per_split: int) -> RecordSet:
    """A small slice of each split, for smoke runs and tests (never for reported figures)."""
    kept = []
    for split in ("train", "validation", "test"):
        kept += records.split(split)[:per_split]
    return replace(records, records=kept)
