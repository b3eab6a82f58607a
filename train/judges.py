"""Training the judge ensemble of a router directory: the learned verifier (train split)
and the calibrated combiners (validation answers at every cascade level), and the
threshold that meets a goal. Everything is fitted on train and validation.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from langgraph.graph.state import CompiledStateGraph

from emafusion.graph.context import Context
from emafusion.graph.state import CascadeView
from emafusion.nodes.policy import PolicySettings, static_mean
from emafusion.nodes.resources import RouterResources
from emafusion.stores.artifacts import embed_records
from emafusion.stores.combiner import CombinerBook
from emafusion.stores.metrics import auroc, expected_calibration_error
from emafusion.stores.providers import recorded_call_cost
from emafusion.stores.recordings import Record, RecordSet, Split
from emafusion.stores.verifier import LearnedVerifier, record_pairs
from emafusion.train.combiner import cross_validated, fit_book
from emafusion.train.graph_runs import run_graph
from emafusion.train.judge_selection import JudgeSelection, select_judges
from emafusion.train.threshold import Goal
from emafusion.train.traces import JudgedTraces
from emafusion.train.verifier import train_verifier


class JudgesError(ValueError):
    pass


@dataclass
class JudgesSession:
    records: RecordSet
    resources: RouterResources
    graph: CompiledStateGraph
    context: Context
    router_dir: Path
    judges: tuple[str, ...]
    concurrency: int


def check_memory_holds_no_held_out(
    resources: RouterResources, records: RecordSet, router_dir: Path
) -> None:
    """Judges are fitted on validation and measured on test: neither may be in the memory."""
    held_out = {r.id for r in records.split("validation", "test")}
    leaked = [q for q in resources.memory.query_ids if q in held_out]
    if leaked:
        raise JudgesError(
            f"the memory in {router_dir} holds {len(leaked)} validation/test queries (e.g. "
            f"{leaked[0]!r}), which would leak their labels. Fix: rebuild it from train only: "
            f"`emafusion memory build --dataset {records.name} --calibrate-on validation "
            f"--out {router_dir}`."
        )


def collect_traces(
    session: JudgesSession, split: Split, judges: Sequence[str]
) -> tuple[JudgedTraces, float]:
    """Every level of every cascade on `split`, judged by `judges` (one graph run)."""
    import asyncio

    records = session.records.split(split)
    context = session.context.replace(
        judges=tuple(judges), combiner="static", stop_early=False, budget_usd=None
    )
    started = time.perf_counter()
    results = asyncio.run(
        run_graph(session.graph, records, context, session.concurrency, keep_trace=True)
    )
    traces = JudgedTraces.from_traces(records, [r.trace for r in results], judges)
    return traces, time.perf_counter() - started


def verifier_vs_prior(
    resources: RouterResources, verifier: LearnedVerifier, records: Sequence[Record]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(memory prior, verifier score, correctness) of every recorded pair of `records`."""
    vectors = embed_records(records, resources.embedder)
    pairs = record_pairs(records, verifier.models)
    features = verifier.features(resources.memory, vectors, pairs)
    # Column 0 is the memory's kNN success estimate: the prior the verifier builds on.
    assert pairs.labels is not None
    return features[:, 0], verifier.predict(features), pairs.labels


def train_and_save_verifier(session: JudgesSession) -> LearnedVerifier:
    train = session.records.split("train")
    embedder = session.resources.embedder
    verifier = train_verifier(
        train, embed_records(train, embedder), session.resources.memory, embedder.id
    )
    prior, score, labels = verifier_vs_prior(
        session.resources, verifier, session.records.split("validation")
    )
    verifier.info["validation_auroc"] = {
        "verifier": auroc(score, labels),
        "prior": auroc(prior, labels),
        "pairs": len(labels),
    }
    verifier.save(session.router_dir)
    session.resources.verifier = verifier
    return verifier


@dataclass
class Fitted:
    book: CombinerBook
    selection: JudgeSelection
    ece_static: float
    ece_learned: float
    answers: int


def nan_ece(probs: np.ndarray, labels: np.ndarray) -> float:
    known = ~np.isnan(probs)
    return expected_calibration_error(probs[known], labels[known]) if known.any() else float("nan")


def nan_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    known = ~np.isnan(scores)
    return auroc(scores[known], labels[known]) if known.any() else float("nan")


def static_confidences(
    scores: np.ndarray, judges: Sequence[str], weights: dict[str, float]
) -> np.ndarray:
    """The static combiner (the policy's `static_mean`) over rows of judge scores."""
    out = [
        static_mean(
            {j: (None if np.isnan(v) else float(v)) for j, v in zip(judges, row, strict=True)},
            weights,
        )
        for row in scores
    ]
    return np.array([np.nan if c is None else c for c in out], dtype=np.float64)


def fit_judges(session: JudgesSession, val: JudgedTraces) -> Fitted:
    signals = val.signals()
    book = fit_book(signals)
    selection = select_judges(signals)
    static = static_confidences(signals.scores, signals.judges, session.context.judge_weights)
    learned = cross_validated(signals)
    fitted = Fitted(
        book,
        selection,
        nan_ece(static, signals.labels),
        expected_calibration_error(learned, signals.labels),
        len(signals),
    )
    book.info = {
        "dataset": session.records.name,
        "fitted_on": "validation",
        "answers": len(signals),
        "judges": list(signals.judges),
        "selected_judges": list(selection.selected),
        "dropped_judges": selection.dropped,
        "validation_ece": {
            "static": fitted.ece_static,
            "learned_cross_validated": fitted.ece_learned,
        },
        "fitted_at": time.time(),
    }
    book.save(session.router_dir)
    session.resources.combiners = book
    return fitted


def cascade_views(
    traces: JudgedTraces,
    judges: Sequence[str],
    combiner: str,
    book: CombinerBook | None,
    weights: dict[str, float],
) -> list[list[CascadeView]]:
    """The traces' policy inputs with confidences from `judges` under `combiner`."""
    if combiner == "learned":
        if book is None:
            raise JudgesError("no learned combiner fitted. Fix: run `emafusion judges train`.")
        learned = book.get(judges)

        def confidence(scores: dict[str, float | None]) -> float | None:
            return learned.combine({j: scores.get(j) for j in learned.judges})

    else:
        chosen = tuple(judges)

        def confidence(scores: dict[str, float | None]) -> float | None:
            return static_mean({j: scores.get(j) for j in chosen}, weights)

    return traces.views(confidence)


def threshold_settings(context: Context) -> PolicySettings:
    """The policy of `context`, stopping early (thresholds are read off never-stop traces)."""
    return replace(PolicySettings.from_context(context), stop_early=True, budget_usd=None)


def single_models(
    records: Sequence[Record], resources: RouterResources
) -> list[tuple[str, float, float]]:
    """(model, accuracy, USD per 1k) of every pool model over its recordings of `records`."""
    rows = []
    for spec in resources.pool.models:
        scores, costs = [], []
        for record in records:
            outcome = record.outcomes.get(spec.name)
            if outcome is None:
                continue
            scores.append(outcome.score)
            costs.append(recorded_call_cost(spec.prices, record.query, outcome)[1])
        if scores:
            rows.append((spec.name, float(np.mean(scores)), float(np.mean(costs)) * 1000.0))
    return rows


def default_goal(session: JudgesSession) -> Goal:
    """The paper's aim: the best single model's validation accuracy, for less."""
    singles = single_models(session.records.split("validation"), session.resources)
    best = max((accuracy for _, accuracy, _ in singles), default=1.0)
    return Goal("target_accuracy", round(best, 4))
