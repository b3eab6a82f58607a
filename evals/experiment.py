"""The evaluation: the router fitted on train, its operating points chosen on cross-fitted
train (+ validation for each one's threshold), then the test split touched once.

Phases (each timed, one progress bar where long):
1. fit: memory and category classifier on train (the classifier calibrated on validation);
2. signals: every query's category probabilities, answer keys, costs and memory
   predictions, cross-fitted (memory: leave-one-out) on train (one embedding pass, cached);
3. presets: staged fusion plans and their thresholds (`train.fusion_search`), written with
   the fusion model into the router directory: the evaluated router is the served one;
4. baselines from the recordings: single models, random, oracle, zero-router hull, the
   fixed agreement cascade, the vote of the top models;
5. the presets on test through the real graph (headline rows), beside the policy's replay
   of the same queries (they must agree); curves and ablations replayed through the
   policy; per-category figures; every test query with missing recordings (failover).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from langgraph.graph.state import CompiledStateGraph

from emafusion.evals.baselines import Matrices, Row, choose_disagreement_pair, complete
from emafusion.evals.readoff import router_row
from emafusion.evals.signal_quality import stop_signal_quality
from emafusion.evals.summary import summarize
from emafusion.graph.context import Context
from emafusion.graph.router import make_graph
from emafusion.nodes.resources import RouterResources
from emafusion.stores.artifacts import RouterArtifacts, build_router_artifacts
from emafusion.stores.embeddings import Embedder
from emafusion.stores.judged import JudgedEvidence
from emafusion.stores.pool import Pool
from emafusion.stores.presets import Preset, PresetBook
from emafusion.stores.recordings import Record, RecordSet
from emafusion.stores.taxonomy import Taxonomy
from emafusion.train import fusion_traces as ft
from emafusion.train.fusion import PlanTraces, Point, threshold_grid
from emafusion.train.fusion_search import Chosen, describe, fit_presets, single_figures
from emafusion.train.graph_runs import QueryResult, run_graph
from emafusion.train.judged_evidence import describe as describe_evidence
from emafusion.train.judged_evidence import measure_router

FOLDS = 5
SMOOTHING = 10.0
TAXONOMY_THRESHOLD = 0.8
TOP_K_VOTE = 3
# Queries the non-default presets run through the graph, to check their replayed rows.
GRAPH_CHECK_QUERIES = 300
Progress = Callable[[str, int], Callable[[int], None]]


@dataclass
class Phases:
    """Wall time per phase, for the closing line."""

    log: Callable[[str], None]
    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.log(f"[{name}] ...")
        started = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - started
        self.log(f"[{name}] {self.seconds[name]:.1f} s")

    def closing_line(self) -> str:
        return "phases: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())


@dataclass
class Evaluation:
    records: RecordSet
    pool: Pool
    embedder: Embedder
    taxonomy: Taxonomy
    concurrency: int = 4
    progress: Progress | None = None
    log: Callable[[str], None] = print
    router_dir: Path | None = None
    resources: RouterResources | None = None
    graph: CompiledStateGraph | None = None
    artifacts: RouterArtifacts | None = None

    # --- phases ------------------------------------------------------------------------

    def fit(self) -> RouterResources:
        self.artifacts = build_router_artifacts(
            self.records,
            self.embedder,
            self.taxonomy,
            self.pool,
            splits=("train",),
            calibrate_on="validation",
        )
        self.resources = RouterResources.create(
            self.pool, self.artifacts, self.embedder, self.taxonomy, self.records, self.router_dir
        )
        # The graph reads the resources at each run: the fusion model and presets fitted
        # below are what it runs.
        self.graph = make_graph(self.resources)
        return self.resources

    def signals(
        self, train: list[Record], others: Sequence[list[Record]]
    ) -> tuple[list[ft.QuerySignals], list[list[ft.QuerySignals]]]:
        assert self.resources is not None and self.artifacts is not None
        everything = [*train, *(r for rs in others for r in rs)]
        vectors = ft.routing_vectors(everything, self.resources)
        fold = [ft.fold_of(r.id, FOLDS) for r in train]
        classifiers = ft.fold_classifiers(
            self.artifacts.classifier,
            vectors[: len(train)],
            [r.category for r in train],
            fold,
            FOLDS,
        )
        # Reliabilities from the whole train split, for train queries too: a query's own
        # outcome is one of some hundred in its category's accuracy, while fold tables would
        # shift every threshold between selection and serving.
        table = self.resources.reliability_table(SMOOTHING)
        # The memory's predictions as the graph asks them (the presets leave k at its
        # default); train queries, which the memory holds, leave-one-out.
        asked = {"taxonomy_threshold": TAXONOMY_THRESHOLD, "k": Context().k}
        train_signals = ft.query_signals(
            train,
            vectors[: len(train)],
            self.resources,
            classifiers,
            table,
            fold,
            leave_out=True,
            **asked,
        )
        out, start = [], len(train)
        for records in others:
            block = vectors[start : start + len(records)]
            out.append(
                ft.query_signals(
                    records, block, self.resources, self.artifacts.classifier, table, **asked
                )
            )
            start += len(records)
        return train_signals, out

    async def _run(
        self, label: str, records: Sequence[Record], context: Context
    ) -> list[QueryResult]:
        assert self.graph is not None
        tick = self.progress(label, len(records)) if self.progress else None
        return await run_graph(self.graph, records, context, self.concurrency, tick)

    # --- the run -------------------------------------------------------------------------

    async def run(self, split: str = "test") -> dict[str, Any]:
        phases = Phases(self.log)
        pool = self.pool
        with phases("fit"):
            resources = self.fit()
        train = complete(self.records.split("train"), pool)
        val = complete(self.records.split("validation"), pool)
        test_all = self.records.split(split)
        test = complete(test_all, pool)
        self.log(
            f"{split}: {len(test_all):,} queries, {len(test):,} with every pool model recorded "
            f"(headline); train {len(train):,}, validation {len(val):,} (complete)"
        )
        with phases("signals"):
            s_train, (s_val, s_test) = self.signals(train, [val, test])
        # The reference single model is chosen on train + validation, never on test.
        best = max(pool.names, key=lambda m: single_figures([*s_train, *s_val], m)[0])
        with phases("presets"):
            model, chosen, search = fit_presets(
                s_train, s_val, resources, best, TAXONOMY_THRESHOLD, SMOOTHING, self.log
            )
        resources.fusion = model
        resources.presets = PresetBook(
            {
                c.name: Preset(c.name, c.settings(TAXONOMY_THRESHOLD), self._provenance(c))
                for c in chosen
            }
        )
        with phases("judged evidence"):
            judged = await self._judged_evidence(chosen, val)
        with phases("baselines"):
            rows = self._baselines(train, test, best)
            recorded_cost = Matrices.build(test, pool).recorded_cost
        with phases("graph"):
            router_rows, drift, default_results = await self._presets_on_test(chosen, test, s_test)
        rows += router_rows
        with phases("curves"):
            sweep, ablations, default_traces = self._curves(chosen, s_test, model)
            default = next(c for c in chosen if c.name == "default")
            stop_signal = stop_signal_quality(default_traces)
        rows += ablations
        with phases("failover"):
            # The queries some model has no recording of, through the graph; the complete
            # ones answer as in the default's run.
            incomplete = [r for r in test_all if not all(m in r.outcomes for m in pool.names)]
            extra = await self._run(
                "default, queries with missing recordings",
                incomplete,
                Context(record_outcomes=False),
            )
            everything = router_row(
                "default, all queries",
                [*default_results, *extra],
                note="missing recordings act as provider failures; the router fails over",
            )
        if self.router_dir is not None:
            with phases("save"):
                self._save(model, resources)
        summary = summarize(
            dataset=self.records.name,
            split=split,
            test=test,
            test_all=test_all,
            rows=rows,
            best=best,
            chosen=chosen,
            sweep=sweep,
            everything=everything,
            all_singles=Matrices.build(test_all, pool).single_rows(),
            recorded_cost=recorded_cost,
            per_category=_per_category(router_rows[0], s_test, best),
            search=search,
            drift=drift,
            concurrency=self.concurrency,
            fusion=model,
        )
        summary["stop_signal"] = {"plan": describe(default.plan), **stop_signal}
        summary["judged_evidence"] = judged.to_json()
        summary["phases_s"] = {k: round(v, 1) for k, v in phases.seconds.items()}
        self.log(phases.closing_line())
        return summary

    # --- pieces ----------------------------------------------------------------------------

    async def _judged_evidence(self, chosen: Sequence[Chosen], val: list[Record]) -> JudgedEvidence:
        """What the default preset's judged outcomes are worth, measured on validation (the
        memory holds train only); saved in ROUTER.json for the router it serves."""
        assert self.resources is not None and self.artifacts is not None
        default = next(c for c in chosen if c.name == "default")
        context = Context(**default.settings(TAXONOMY_THRESHOLD))
        evidence = await measure_router(
            self.resources, val, context, "validation", self.concurrency
        )
        self.artifacts.info["judged"] = evidence.to_json()
        self.log(describe_evidence(evidence))
        return evidence

    def _provenance(self, chosen: Chosen) -> dict[str, Any]:
        return {
            "goal": chosen.goal.name,
            "chosen_on": "plan: cross-fitted train; threshold: train + validation",
            "selection": {
                "accuracy": chosen.selection.accuracy,
                "cost_per_1k_usd": chosen.selection.cost_per_1k,
            },
            "validation": {
                "accuracy": chosen.validation.accuracy,
                "cost_per_1k_usd": chosen.validation.cost_per_1k,
            },
            "plan": describe(chosen.plan),
            "dataset": self.records.name,
            "note": chosen.note,
            "written_at": time.time(),
        }

    def _baselines(self, train: list[Record], test: list[Record], best: str) -> list[Row]:
        pool = self.pool
        m_train, m_test = Matrices.build(train, pool), Matrices.build(test, pool)
        rows: list[Row] = [*m_test.single_rows(), m_test.random_row(), m_test.oracle_row()]
        j_best = pool.names.index(best)
        budget = 1000.0 * float(np.nanmean(m_train.cost[:, j_best]))
        first, second = choose_disagreement_pair(m_train, j_best, budget)
        correct, cost, escalated = m_test.disagreement(first, second, j_best)
        rows.append(
            Row(
                "agreement cascade",
                "baseline",
                float(correct.mean()),
                1000.0 * float(cost.mean()),
                2.0 + float(escalated.mean()),
                float(escalated.mean()),
                None,
                correct,
                note=f"{pool.names[first]} + {pool.names[second]} (chosen on train), "
                f"{best} on disagreement",
            )
        )
        order = list(np.argsort(-np.nanmean(m_train.score, axis=0)))
        top = order[:TOP_K_VOTE]
        correct, cost = m_test.vote(top, order)
        rows.append(
            Row(
                f"vote of the top {TOP_K_VOTE}",
                "baseline",
                float(correct.mean()),
                1000.0 * float(cost.mean()),
                float(TOP_K_VOTE),
                0.0,
                None,
                correct,
                note=", ".join(pool.names[j] for j in top) + " (most accurate on train)",
            )
        )
        return rows

    async def _presets_on_test(
        self, chosen: Sequence[Chosen], test: list[Record], s_test: list[ft.QuerySignals]
    ) -> tuple[list[Row], float, list[QueryResult]]:
        """The default preset through the real graph on every test query; the others
        through the graph on a slice (the replay-equals-graph check) and replayed through
        the policy on all of them. Returns the rows, the largest replay-vs-graph
        difference, and the default's graph results."""
        assert self.resources is not None
        rows, drift, default_results = [], 0.0, []
        check = GRAPH_CHECK_QUERIES
        for c in chosen:
            note = (
                f"{describe(c.plan)}; threshold "
                f"{'never stop' if c.threshold is None else round(c.threshold, 4)}"
                + (f"; {c.note}" if c.note else "")
            )
            context = Context(preset=c.name, record_outcomes=False)
            traces = self._traces(c, s_test)
            if c.name == "default":
                default_results = await self._run(f"preset {c.name}", test, context)
                row = router_row(f"emafusion {c.name}", default_results, note=note)
                graph_slice, replay_slice = default_results, traces
            else:
                graph_slice = await self._run(f"preset {c.name} (check)", test[:check], context)
                replay_slice = self._traces(c, s_test[:check])
                row = _point_row(f"emafusion {c.name}", traces.point(c.threshold))
                row.note = f"{note}; replayed, graph-checked on {len(graph_slice)} queries"
            row.selection = (c.selection.accuracy, c.selection.cost_per_1k)
            graph_row = router_row("check", graph_slice)
            replayed = replay_slice.point(c.threshold)
            drift = max(
                drift,
                abs(replayed.accuracy - graph_row.accuracy),
                abs(replayed.cost_per_1k - graph_row.cost_per_1k_usd),
            )
            rows.append(row)
        return rows, drift, default_results

    def _traces(
        self, chosen: Chosen, signals: Sequence[ft.QuerySignals], model: Any = None
    ) -> PlanTraces:
        assert self.resources is not None
        from emafusion.nodes.policy import PolicySettings

        settings = PolicySettings(threshold=0.5, max_levels=8, fusion="vote")
        return PlanTraces.build(
            chosen.plan,
            signals,
            self.resources,
            TAXONOMY_THRESHOLD,
            settings,
            model or self.resources.fusion,
        )

    def _curves(
        self, chosen: Sequence[Chosen], s_test: list[ft.QuerySignals], model: Any
    ) -> tuple[list[Row], list[Row], PlanTraces]:
        """Every preset's plan over thresholds (the router's trade-off curve), the
        ablations of the default (its vote without calibration), and the default's traces."""
        sweep: list[Row] = []
        built: dict[str, PlanTraces] = {}
        for c in chosen:
            if describe(c.plan) in built:
                continue
            traces = built[describe(c.plan)] = self._traces(c, s_test)
            for t in threshold_grid(traces.confidences(), 25):
                sweep.append(_point_row(f"sweep {c.name} plan t={t}", traces.point(t)))
        default = next(c for c in chosen if c.name == "default")
        raw = replace(model, coef=(), intercept=0.0)
        raw_traces = self._traces(default, s_test, raw)
        # The uncalibrated posterior at the threshold reaching the same cost on test would
        # be chosen on test: report it at the calibrated threshold's selection cost instead.
        points = raw_traces.curve(threshold_grid(raw_traces.confidences(), 25))
        cost = default.selection.cost_per_1k
        within = [p for p in points if p.cost_per_1k <= cost] or points
        ablation = _point_row(
            "ablation: default plan, uncalibrated vote (best at its cost)",
            max(within, key=lambda p: p.accuracy),
        )
        ablation.note = "chosen on test: an upper bound for the uncalibrated vote"
        return sweep, [ablation], built[describe(default.plan)]

    def _save(self, model: Any, resources: RouterResources) -> None:
        assert self.router_dir is not None and self.artifacts is not None
        assert resources.presets is not None
        self.artifacts.save(self.router_dir)
        model.save(self.router_dir)
        resources.presets.save(self.router_dir)
        self.log(f"router, fusion model and presets written to {self.router_dir}")


def _per_category(default: Row, s_test: list[ft.QuerySignals], best: str) -> list[dict[str, Any]]:
    """The default preset (its graph run) against the best single model, per category."""
    table = []
    for category in sorted({s.record.category for s in s_test}):
        idx = [i for i, s in enumerate(s_test) if s.record.category == category]
        best_acc, best_cost = single_figures([s_test[i] for i in idx], best)
        table.append(
            {
                "category": category,
                "n": len(idx),
                "router_accuracy": float(default.correct[idx].mean()),
                "best_single_accuracy": best_acc,
                "best_single_cost_per_1k_usd": best_cost,
            }
        )
    return table


def _point_row(name: str, point: Point) -> Row:
    return Row(
        name,
        "router",
        point.accuracy,
        point.cost_per_1k,
        point.models_called,
        point.escalation_rate,
        None,
        point.correct,
        note="replayed through the policy",
    )


def run_evaluation(evaluation: Evaluation, split: str = "test") -> dict[str, Any]:
    return asyncio.run(evaluation.run(split))


def limit_records(records: RecordSet, per_split: int) -> RecordSet:
    """A small slice of each split, for smoke runs and tests (never for reported figures)."""
    kept = []
    for split in ("train", "validation", "test"):
        kept += records.split(split)[:per_split]
    return replace(records, records=kept)
