"""The evaluation: the paper's experiments on the recordings, through the real graph.

Fit on train (memory, classifier), choose every threshold on validation, then touch the
test split once: single models and baselines from the recordings, router rows by running
the compiled graph over every test query.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from emafusion.graph.cli_judges import traces_from_results
from emafusion.graph.context import Context
from emafusion.graph.eval_metrics import (
    Point,
    aiq,
    apgr,
    bootstrap_gain,
    cpt,
    hull_value,
    upper_hull,
)
from emafusion.graph.evaluate import QueryResult, run_graph
from emafusion.nodes.resources import RouterResources
from emafusion.stores.answers import extract_choice
from emafusion.stores.artifacts import build_router_artifacts, embed_records
from emafusion.stores.combiner import fit_book
from emafusion.stores.embeddings import Embedder
from emafusion.stores.pool import COST_RECORDED, Pool, recorded_call_cost
from emafusion.stores.recordings import Record, RecordSet
from emafusion.stores.taxonomy import Taxonomy
from emafusion.stores.verifier import train_verifier

# Validation grid. Each (levels, floor, margin) cell is one graph run in which escalation
# never stops early; every threshold is then read off its judged trace (see
# `stop_at_threshold`), which is exactly where the graph would have stopped.
THRESHOLD_GRID = tuple(round(0.30 + 0.01 * i, 2) for i in range(70))
LEVEL_GRID = (2, 3)
FLOOR_GRID = (0.0, 0.5, 0.65)
MARGIN_GRID = (0.1, 0.3, 1.0)
# Cost weights (success probability per $ per 1k queries) for the router's trade-off curve.
COST_WEIGHTS = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
SWEEP = (0.3, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.01)
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
class Row:
    name: str
    kind: str  # single | baseline | router
    accuracy: float
    cost_per_1k_usd: float
    models_called: float
    escalation_rate: float
    overhead_ms_p50: float | None
    correct: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "kind": self.kind,
            "accuracy": round(self.accuracy, 4),
            "cost_per_1k_usd": round(self.cost_per_1k_usd, 4),
            "models_called": round(self.models_called, 3),
            "escalation_rate": round(self.escalation_rate, 4),
            "overhead_ms_p50": None
            if self.overhead_ms_p50 is None
            else round(self.overhead_ms_p50, 3),
        }
        if self.note:
            out["note"] = self.note
        return out

    @property
    def point(self) -> Point:
        return (self.cost_per_1k_usd, self.accuracy)


@dataclass
class Matrices:
    """Per (query, model): recorded score, the call's USD, and the chosen letter."""

    records: list[Record]
    models: list[str]
    score: np.ndarray  # nan where the model has no recording
    cost: np.ndarray
    choice: list[list[str | None]]
    recorded_cost: bool

    @classmethod
    def build(cls, records: Sequence[Record], pool: Pool) -> Matrices:
        models = pool.names
        score = np.full((len(records), len(models)), np.nan)
        cost = np.full((len(records), len(models)), np.nan)
        choice: list[list[str | None]] = []
        recorded = True
        for i, record in enumerate(records):
            letters: list[str | None] = []
            for j, model in enumerate(models):
                outcome = record.outcomes.get(model)
                if outcome is None:
                    letters.append(None)
                    continue
                _, usd, source = recorded_call_cost(pool.get(model).prices, record.query, outcome)
                recorded &= source == COST_RECORDED
                score[i, j], cost[i, j] = outcome.score, usd
                letters.append(extract_choice(outcome.response))
            choice.append(letters)
        return cls(list(records), models, score, cost, choice, recorded)

    def single_rows(self) -> list[Row]:
        rows = []
        for j, model in enumerate(self.models):
            # A missing recording is a provider failure: wrong, and free.
            correct = np.nan_to_num(self.score[:, j], nan=0.0)
            rows.append(
                Row(
                    model,
                    "single",
                    float(correct.mean()),
                    1000.0 * float(np.nanmean(self.cost[:, j]))
                    if np.isfinite(self.cost[:, j]).any()
                    else 0.0,
                    1.0,
                    0.0,
                    None,
                    correct,
                )
            )
        return rows

    def random_row(self) -> Row:
        correct = np.nanmean(np.nan_to_num(self.score, nan=0.0), axis=1)
        cost = np.nanmean(self.cost, axis=1)
        return Row(
            "random",
            "baseline",
            float(correct.mean()),
            1000.0 * float(cost.mean()),
            1.0,
            0.0,
            None,
            correct,
            note="expected value of a uniform pick",
        )

    def oracle_row(self) -> Row:
        correct = np.zeros(len(self.records))
        cost = np.zeros(len(self.records))
        for i in range(len(self.records)):
            right = np.flatnonzero(self.score[i] >= 0.5)
            available = np.flatnonzero(np.isfinite(self.cost[i]))
            pick = right if len(right) else available
            j = pick[np.argmin(self.cost[i, pick])]
            correct[i], cost[i] = (1.0 if len(right) else 0.0), self.cost[i, j]
        return Row(
            "oracle",
            "baseline",
            float(correct.mean()),
            1000.0 * float(cost.mean()),
            1.0,
            0.0,
            None,
            correct,
            note="cheapest correct model per query",
        )

    def disagreement(
        self, first: int, second: int, strong: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Two cheap models answer; on disagreement (or a missing answer) the strong one does."""
        correct = np.zeros(len(self.records))
        cost = np.zeros(len(self.records))
        escalated = np.zeros(len(self.records))
        for i in range(len(self.records)):
            a, b = self.choice[i][first], self.choice[i][second]
            base = np.nan_to_num(self.cost[i, [first, second]], nan=0.0).sum()
            if a is not None and a == b:
                correct[i] = np.nan_to_num(self.score[i, first], nan=0.0)
                cost[i] = base
            else:
                correct[i] = np.nan_to_num(self.score[i, strong], nan=0.0)
                cost[i] = base + np.nan_to_num(self.cost[i, strong], nan=0.0)
                escalated[i] = 1.0
        return correct, cost, escalated


def choose_disagreement_pair(val: Matrices, best: int, budget_per_1k: float) -> tuple[int, int]:
    """The pair of cheaper models whose disagreement cascade is most accurate on validation
    within the best model's cost."""
    mean_cost = np.nanmean(val.cost, axis=0)
    cheaper = [j for j in range(len(val.models)) if j != best and mean_cost[j] < mean_cost[best]]
    best_pair, best_key = (cheaper[0], cheaper[1]), (-1.0, 0.0)
    for first, second in itertools.combinations(cheaper, 2):
        correct, cost, _ = val.disagreement(first, second, best)
        within = 1000.0 * cost.mean() <= budget_per_1k
        key = (float(correct.mean()) if within else -1.0, -float(cost.mean()))
        if key > best_key:
            best_pair, best_key = (first, second), key
    return best_pair


def router_row(name: str, results: Sequence[QueryResult], note: str = "") -> Row:
    correct = np.array([r.correct for r in results])
    return Row(
        name,
        "router",
        float(correct.mean()),
        1000.0 * float(np.mean([r.cost_usd for r in results])),
        float(np.mean([r.models_called for r in results])),
        float(np.mean([r.escalated for r in results])),
        statistics.median(r.overhead_ms for r in results),
        correct,
        note,
    )


def complete(records: Sequence[Record], pool: Pool) -> list[Record]:
    """Queries every pool model has a recording of (the headline population)."""
    return [r for r in records if all(m in r.outcomes for m in pool.names)]


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


def stop_at_threshold(
    result: QueryResult, record: Record, threshold: float
) -> tuple[float, float, int]:
    """(correct, USD, models called) had the run used `threshold`: the graph's rule.

    Valid for a run that never returned early (threshold above every confidence): the
    cascade's attempts do not depend on the threshold, only where it stops.
    """
    judged = [e["data"] for e in result.trace if e["event"] == "judged"]
    chosen = None
    spent = judged[-1]["spent_usd"] if judged else 0.0
    called = len(judged)
    for index, step in enumerate(judged):
        confidence = step["confidence"]
        if step["status"] == "answered" and (confidence is None or confidence >= threshold):
            chosen, spent, called = step, step["spent_usd"], index + 1
            break
    if chosen is None and judged:
        # Nothing cleared: the most confident answer as confidences stand at the end
        # (earlier ones re-scored for agreement), the later one on ties.
        final = judged[-1]["confidences"]
        answered = [i for i, s in enumerate(judged) if s["status"] == "answered"]
        if answered:
            best = max(reversed(answered), key=lambda i: final[i] or 0.0)
            chosen = judged[best]
    if chosen is None:
        return 0.0, spent, called
    outcome = record.outcomes.get(chosen["model"])
    return (outcome.score if outcome is not None else 0.0), spent, called


def read_off_row(
    name: str, results: Sequence[QueryResult], records: Sequence[Record], threshold: float
) -> Row:
    """A row for `threshold` from a run that never returned early (see stop_at_threshold)."""
    outcomes = [
        stop_at_threshold(r, rec, threshold) for r, rec in zip(results, records, strict=True)
    ]
    correct = np.array([c for c, _, _ in outcomes])
    called = np.array([n for _, _, n in outcomes])
    return Row(
        name,
        "router",
        float(correct.mean()),
        1000.0 * float(np.mean([usd for _, usd, _ in outcomes])),
        float(called.mean()),
        float(np.mean(called > 1)),
        None,
        correct,
        note="read off one run's judged trace",
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
        return self.resources

    def context(self, **settings: Any) -> Context:
        assert self.resources is not None
        settings = {"judges": JUDGES, "combiner": "learned", **settings}
        return Context(dataset=None, resources=self.resources, record_outcomes=False, **settings)

    async def fit_combiners(self, val_records: list[Record]) -> None:
        """One calibrated combiner per judge subset, on validation answers at every level."""
        assert self.resources is not None
        results = await self._run(
            "validation judge signals",
            val_records,
            self.context(combiner="static", escalation_threshold=1.01, max_levels=3),
            keep_trace=True,
        )
        traces = traces_from_results(val_records, results, JUDGES)
        self.resources.combiners = fit_book(traces.signals())

    def _subset(self, records: list[Record]) -> list[Record]:
        return records[: self.limit] if self.limit else records

    async def _run(
        self, label: str, records: Sequence[Record], context: Context, keep_trace: bool = False
    ) -> list[QueryResult]:
        tick = self.progress(label, len(records)) if self.progress else None
        return await run_graph(records, context, self.concurrency, tick, keep_trace)

    async def validation_grid(self, val_records: list[Record]) -> list[OperatingPoint]:
        grid = []
        for levels, floor, margin in itertools.product(LEVEL_GRID, FLOOR_GRID, MARGIN_GRID):
            settings = {
                "max_levels": levels,
                "min_p_success": floor,
                "suitability_margin": margin,
                "escalation_threshold": 1.01,
            }
            results = await self._run(
                f"validation levels={levels} floor={floor} margin={margin}",
                val_records,
                self.context(**settings),
                keep_trace=True,
            )
            for threshold in THRESHOLD_GRID:
                row = read_off_row("validation", results, val_records, threshold)
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
        never_stop = await self._run(
            "threshold sweep",
            test,
            self.context(**{**full_settings, "escalation_threshold": 1.01}),
            keep_trace=True,
        )
        sweep = [read_off_row(f"sweep t={t}", never_stop, test, t) for t in SWEEP]
        # The router's cheaper operating points: a price on each point of success
        # probability makes the cascade stop at cheaper top models.
        for weight in COST_WEIGHTS:
            runs = await self._run(
                f"cost-weight sweep w={weight}",
                test,
                self.context(
                    **{**full_settings, "escalation_threshold": 1.01, "cost_weight": weight}
                ),
                keep_trace=True,
            )
            sweep += [read_off_row(f"sweep w={weight} t={t}", runs, test, t) for t in SWEEP]

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


def limit_records(records: RecordSet, per_split: int) -> RecordSet:
    """A small slice of each split, for smoke runs and tests (never for reported figures)."""
    kept = []
    for split in ("train", "validation", "test"):
        kept += records.split(split)[:per_split]
    return replace(records, records=kept)
