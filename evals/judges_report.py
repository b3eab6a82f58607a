"""`emafusion judges report`: each judge's AUROC, ECE and cost on test; the combined
confidence, static vs learned; the verifier against the memory prior; and the signal
ablation: the real graph with each judge dropped in turn (its combiner refitted without
it), each at the threshold that meets the same goal on validation, beside the policy's
replay of the test traces (they must agree).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from emafusion.stores.combiner import subset_key
from emafusion.stores.metrics import auroc, expected_calibration_error
from emafusion.train.combiner import JudgeSignals
from emafusion.train.graph_runs import run_graph
from emafusion.train.judge_selection import JudgeSelection, select_judges
from emafusion.train.judges import (
    JudgesSession,
    cascade_views,
    collect_traces,
    fit_judges,
    nan_auroc,
    nan_ece,
    single_models,
    static_confidences,
    threshold_settings,
    train_and_save_verifier,
    verifier_vs_prior,
)
from emafusion.train.threshold import Goal, ThresholdChoice, select_threshold
from emafusion.train.traces import CascadeResult, JudgedTraces


@dataclass
class CascadeRow:
    name: str
    choice: ThresholdChoice
    graph: CascadeResult
    replay: CascadeResult


def print_judge_table(
    test: JudgedTraces, signals: JudgeSignals, static: np.ndarray, learned: np.ndarray
) -> None:
    print(
        f"\n## Judges on test: every level of every cascade ({len(signals):,} answers to "
        f"{len(test):,} queries; {signals.labels.mean():.1%} right)"
    )
    print(f"{'judge':<26} {'spoke':>7} {'AUROC':>7} {'ECE':>7} {'$/1k answers':>13}")
    costs = signals.cost_per_1k()
    for j, judge in enumerate(signals.judges):
        scores = signals.scores[:, j]
        spoke = ~np.isnan(scores)
        print(
            f"{judge:<26} {spoke.mean():>7.1%} {nan_auroc(scores, signals.labels):>7.4f} "
            f"{nan_ece(scores, signals.labels):>7.4f} {costs[judge]:>13.4f}"
        )
    total = sum(costs.values())
    for name, probs in (("combined: static mean", static), ("combined: learned", learned)):
        print(
            f"{name:<26} {(~np.isnan(probs)).mean():>7.1%} "
            f"{nan_auroc(probs, signals.labels):>7.4f} {nan_ece(probs, signals.labels):>7.4f} "
            f"{total:>13.4f}"
        )
    print(
        "spoke: share of answers the judge scored (agreement abstains on first levels). "
        "ECE: 10 equal-width bins."
    )


def print_reliability(probs: np.ndarray, labels: np.ndarray) -> None:
    """Where the learned confidence says p, how often answers are right (test)."""
    edges = np.linspace(0.0, 1.0, 6)
    which = np.clip(np.digitize(probs, edges[1:-1]), 0, 4)
    parts = []
    for b in range(5):
        mask = which == b
        if mask.any():
            parts.append(
                f"[{edges[b]:.1f},{edges[b + 1]:.1f}) said {probs[mask].mean():.2f} "
                f"right {labels[mask].mean():.2f} (n={int(mask.sum())})"
            )
    print("learned reliability: " + "; ".join(parts))


def graph_result(
    session: JudgesSession,
    judges: Sequence[str],
    combiner: Literal["static", "learned"],
    threshold: float,
) -> CascadeResult:
    records = session.records.split("test")
    context = session.context.replace(
        judges=tuple(judges), combiner=combiner, escalation_threshold=threshold, budget_usd=None
    )
    results = asyncio.run(run_graph(session.graph, records, context, session.concurrency))
    levels = np.array([r.models_called for r in results])
    correct = np.array([r.correct for r in results])
    return CascadeResult(
        threshold=threshold,
        accuracy=float(correct.mean()),
        cost_per_1k=float(np.mean([r.cost_usd for r in results])) * 1000.0,
        escalation_rate=float(np.mean([r.escalated for r in results])),
        mean_levels=float(levels.mean()),
        correct=correct,
        levels=levels,
    )


def report(session: JudgesSession, goal: Goal, goal_is_default: bool) -> None:
    records, judges = session.records, session.judges
    sizes = records.split_sizes()
    print(
        f"# Judges report: {records.name} (train {sizes['train']:,} / validation "
        f"{sizes['validation']:,} / test {sizes['test']:,} queries; router {session.router_dir})"
    )
    book = session.resources.combiners
    if "verifier" in judges and session.resources.verifier is None:
        print("no trained verifier in the router directory: training it now")
        train_and_save_verifier(session)
        book = None  # a combiner fitted without this verifier's scores is stale
    val, _ = collect_traces(session, "validation", judges)
    if book is None or subset_key(judges) not in book.combiners:
        print("no combiner fitted for these judges in the router directory: fitting it now")
        fit_judges(session, val)
    book = session.resources.combiners
    assert book is not None
    weights = session.context.judge_weights
    test, _ = collect_traces(session, "test", judges)

    signals = test.signals()
    static_test = static_confidences(signals.scores, judges, weights)
    learned = book.get(judges)
    learned_test = learned.predict(signals.select(learned.judges).scores)
    print_judge_table(test, signals, static_test, learned_test)
    print(
        f"calibration (ECE, test): static mean {nan_ece(static_test, signals.labels):.4f} -> "
        f"learned {nan_ece(learned_test, signals.labels):.4f}"
    )
    print_reliability(learned_test, signals.labels)

    verifier = session.resources.verifier
    if verifier is not None:
        prior, score, labels = verifier_vs_prior(session.resources, verifier, records.split("test"))
        gain = auroc(score, labels) - auroc(prior, labels)
        print(
            f"\n## Learned verifier vs memory prior, every recorded (query, model) pair of test "
            f"({len(labels):,})"
        )
        print(
            f"AUROC of correctness: verifier {auroc(score, labels):.4f}, memory prior "
            f"{auroc(prior, labels):.4f} ({gain:+.4f}); ECE verifier "
            f"{expected_calibration_error(score, labels):.4f}, prior "
            f"{expected_calibration_error(prior, labels):.4f}"
        )

    # Each cascade's threshold is chosen on validation for the same goal, so every row is
    # the best that judge set can do for it (the paper's ablation, with refitted combiners).
    print("\n## Cascade on test: the real graph at thresholds chosen on validation")
    default = " (default: the best single model's validation accuracy)" if goal_is_default else ""
    print(f"goal: {goal.describe()}{default}")
    configs: list[tuple[str, tuple[str, ...], Literal["static", "learned"]]] = [
        ("all judges, static mean", judges, "static"),
        ("all judges, learned", judges, "learned"),
    ]
    if len(judges) > 1:
        for judge in judges:
            rest = tuple(j for j in judges if j != judge)
            configs.append((f"learned, without {judge}", rest, "learned"))
    base = threshold_settings(session.context)
    rows = []
    for name, subset, combiner in configs:
        val_views = cascade_views(val, subset, combiner, book, weights)
        test_views = cascade_views(test, subset, combiner, book, weights)
        choice = select_threshold(val, val_views, goal, base)
        replay = test.evaluate(replace(base, threshold=choice.threshold), test_views)
        result = graph_result(session, subset, combiner, choice.threshold)
        rows.append(CascadeRow(name, choice, result, replay))
    print_cascade_rows(rows)
    singles = single_models(records.split("test"), session.resources)
    if singles:
        best = max(singles, key=lambda s: s[1])
        print(
            f"reference: best single model on test {best[0]} accuracy {best[1]:.4f} at "
            f"${best[2]:.4f} per 1k queries"
        )
    print()
    print_selection(select_judges(val.signals()))


def print_selection(selection: JudgeSelection) -> None:
    print(
        f"judge selection (validation, 5-fold AUROC; a judge must add >= {selection.min_gain} "
        f"AUROC and >= {selection.min_auroc_per_usd} AUROC per $ per 1k answers it costs):"
    )
    print(f"  selected: {', '.join(selection.selected)}")
    for judge, reason in selection.dropped.items():
        print(f"  dropped {judge}: {reason}")
    print(f"  {'subset':<52} {'AUROC':>7} {'judge $/1k':>11} {'utility':>8}")
    for score in selection.subsets[:6]:
        print(
            f"  {'+'.join(score.judges):<52} {score.auroc:>7.4f} {score.cost_per_1k:>11.4f} "
            f"{score.utility:>8.4f}"
        )


def print_cascade_rows(rows: Sequence[CascadeRow]) -> None:
    print(
        f"{'cascade':<34} {'threshold':>9} {'val acc':>8} {'accuracy':>9} {'$/1k':>8} "
        f"{'escalated':>9} {'models':>6} {'d acc':>7} {'d $/1k':>7}"
    )
    base = rows[1].graph
    for row in rows:
        g = row.graph
        deltas = (
            f"{g.accuracy - base.accuracy:>+7.4f} {g.cost_per_1k - base.cost_per_1k:>+7.3f}"
            if row.name.startswith("learned, without")
            else f"{'':>7} {'':>7}"
        )
        mark = "" if row.choice.met else "*"
        print(
            f"{row.name:<34} {row.choice.threshold:>9.4f} "
            f"{row.choice.result.accuracy:>7.4f}{mark:1} {g.accuracy:>9.4f} "
            f"{g.cost_per_1k:>8.3f} {g.escalation_rate:>9.1%} {g.mean_levels:>6.2f} {deltas}"
        )
    drift = max(
        max(
            abs(r.graph.accuracy - r.replay.accuracy),
            abs(r.graph.cost_per_1k - r.replay.cost_per_1k),
        )
        for r in rows
    )
    print(
        "accuracy, $/1k (models + judges), escalated: on test. val acc: what the threshold "
        "reached on validation (*: goal out of reach there; the most accurate point, cheapest "
        "first). d: against all judges, learned. The policy's replay of the test traces (what "
        f"threshold selection uses) matches these graph runs within {drift:.1e}."
    )
