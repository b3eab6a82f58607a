"""Measuring what a judged outcome is worth: the run's beliefs against held-out labels.

The real graph answers a split the memory was not built from (validation), as it would
serve it but recording nothing; each answer's belief (`answer_beliefs`, what `record`
would store) and the memory's prediction of the same answer (`memory_p`) are scored
against the recorded label. The Platt map is cross-fitted (two folds by the split's hash
rule) for the Brier score that sets the weight, then refitted on everything for serving.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from langgraph.graph.state import CompiledStateGraph

from emafusion.graph.context import Context
from emafusion.nodes.resources import RouterResources
from emafusion.stores.judged import JudgedEvidence, judging_key
from emafusion.stores.recordings import Record
from emafusion.train.combiner import fit_logistic
from emafusion.train.fusion_traces import fold_of
from emafusion.train.graph_runs import run_graph

MIN_ANSWERS = 20  # fewer labelled answers measure nothing: the weight stays 0


@dataclass(frozen=True)
class BeliefRows:
    """One row per judged answer: the run's belief, the memory's prediction, the label."""

    record_ids: list[str]
    models: list[str]
    beliefs: np.ndarray
    memory: np.ndarray
    labels: np.ndarray


async def collect_beliefs(
    graph: CompiledStateGraph, records: Sequence[Record], context: Context, concurrency: int = 8
) -> BeliefRows:
    """Every judged answer of the runs over `records` (recording off)."""
    quiet = context.replace(record_outcomes=False)
    results = await run_graph(graph, records, quiet, concurrency, keep_trace=True)
    ids, models, beliefs, memory, labels = [], [], [], [], []
    for record, result in zip(records, results, strict=True):
        returned = [e["data"] for e in result.trace if e["event"] == "returned"]
        for believed in returned[-1]["beliefs"] if returned else []:
            outcome = record.outcomes.get(believed["model"])
            if outcome is None or believed["memory_p"] is None:
                continue
            ids.append(record.id)
            models.append(believed["model"])
            beliefs.append(float(believed["belief"]))
            memory.append(float(believed["memory_p"]))
            labels.append(float(outcome.score))
    return BeliefRows(ids, models, np.asarray(beliefs), np.asarray(memory), np.asarray(labels))


def _logits(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1.0 - 1e-6)
    return np.log(p / (1.0 - p))


def _platt(beliefs: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    weights, bias = fit_logistic(_logits(beliefs)[:, None], labels, l2=1.0)
    return float(weights[0]), float(bias)


def _apply(beliefs: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-(slope * _logits(beliefs) + intercept))))


def _out_of_fold_brier(p: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> float:
    """Brier score of `p` through a Platt map fitted on the other fold."""
    calibrated = np.empty(len(p))
    for fold in (0, 1):
        held = folds == fold
        fit = ~held if (~held).any() and len(set(labels[~held].round().tolist())) == 2 else held
        calibrated[held] = _apply(p[held], *_platt(p[fit], labels[fit]))
    return float(np.mean((calibrated - labels) ** 2))


def measure(rows: BeliefRows, context: Context, split: str) -> JudgedEvidence:
    """The weight of judged outcomes for `context`'s judging, from `rows` of `split`."""
    n = len(rows.labels)
    if n < MIN_ANSWERS or len(set(rows.labels.round().tolist())) < 2:
        # Too little to measure: judged outcomes count for nothing.
        brier = float(np.mean((rows.memory - rows.labels) ** 2)) if n else 0.0
        return JudgedEvidence(judging_key(context), 0.0, 1.0, 0.0, brier, brier, n, split)
    folds = np.asarray([fold_of(q, 2) for q in rows.record_ids])
    # Both calibrated the same way, out of fold: calibrating alone earns no weight.
    brier_belief = _out_of_fold_brier(rows.beliefs, rows.labels, folds)
    brier_memory = _out_of_fold_brier(rows.memory, rows.labels, folds)
    skill = 1.0 - brier_belief / brier_memory if brier_memory > 0 else 0.0
    slope, intercept = _platt(rows.beliefs, rows.labels)
    calibrated = _apply(rows.beliefs, slope, intercept)
    return JudgedEvidence(
        judging=judging_key(context),
        weight=float(min(1.0, max(0.0, skill))),
        slope=slope,
        intercept=intercept,
        brier_belief=brier_belief,
        brier_memory=brier_memory,
        answers=n,
        split=split,
        baseline={
            "truth": _by_model(rows.models, rows.labels - rows.memory),
            "judged": _by_model(rows.models, calibrated - rows.memory),
        },
    )


def _by_model(models: Sequence[str], residuals: np.ndarray) -> dict[str, tuple[float, float]]:
    """Per model with two residuals or more: their (mean, sd)."""
    out = {}
    for model in sorted(set(models)):
        mine = residuals[np.asarray(models) == model]
        if len(mine) > 1:
            out[model] = (float(mine.mean()), float(mine.std()))
    return out


MOST_QUERIES = 1000  # a seeded sample bounds the measurement's time (one graph run each)


async def measure_router(
    resources: RouterResources,
    records: Sequence[Record],
    context: Context,
    split: str,
    concurrency: int = 8,
) -> JudgedEvidence:
    """Run the router over `records` (a split its memory was not built from) and measure;
    the result is set on `resources` (and its memory's judged weight) and returned."""
    from emafusion.graph.router import make_graph

    leaked = [r.id for r in records if r.id in resources.memory]
    if leaked:
        raise ValueError(
            f"measuring judged evidence on {split!r}: the memory holds {len(leaked)} of its "
            f"queries (e.g. {leaked[0]!r}), whose labels the memory would predict from "
            f"themselves. Fix: measure on a split the memory was not built from."
        )
    sample = sorted(records, key=lambda r: fold_of(r.id, 1 << 30))[:MOST_QUERIES]
    rows = await collect_beliefs(make_graph(resources), sample, context, concurrency)
    evidence = measure(rows, context, split)
    resources.use_judged(evidence)
    return evidence


def describe(evidence: JudgedEvidence) -> str:
    return (
        f"judged outcomes count {evidence.weight:.3f} of a label: Brier of the calibrated "
        f"beliefs {evidence.brier_belief:.4f} vs the memory's {evidence.brier_memory:.4f} on "
        f"{evidence.answers:,} {evidence.split} answers (judges "
        f"{', '.join(evidence.judging['judges'])}, fusion {evidence.judging['fusion']})"
    )
