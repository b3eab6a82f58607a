"""`emafusion judges train|report|threshold`: the judge ensemble, trained and measured.

- train: the learned verifier on the train split (saved beside the memory), then a graph
  run over the validation split that calls every level of every cascade, whose judge
  signals fit a calibrated combiner per judge subset and choose the judges.
- report: on the test split, each judge's AUROC, ECE and cost; the combined confidence,
  static vs learned; the verifier against the memory prior; and the signal ablation: the
  real graph with each judge dropped in turn (its combiner refitted without it), each at
  the threshold that meets the same goal on validation.
- threshold: the escalation threshold that meets a goal on validation, as Context settings.

Everything is fitted on train and validation; the test split is only measured.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from emafusion.graph.cli_args import add_source_args
from emafusion.graph.context import Context
from emafusion.graph.evaluate import QueryResult, run_graph
from emafusion.nodes.judges import get_judge
from emafusion.nodes.resources import RouterResources, load_resources
from emafusion.stores.artifacts import default_router_dir, embed_records
from emafusion.stores.combiner import (
    CascadeResult,
    CascadeTraces,
    CombinerBook,
    Goal,
    JudgeSelection,
    JudgeSignals,
    ThresholdChoice,
    cross_validated,
    fit_book,
    select_judges,
    select_threshold,
    simulate,
    static_confidence,
    subset_key,
)
from emafusion.stores.metrics import auroc, expected_calibration_error
from emafusion.stores.pool import recorded_call_cost
from emafusion.stores.recordings import Record, RecordSet, Split, load_dataset
from emafusion.stores.verifier import LearnedVerifier, record_pairs, train_verifier

OFFLINE_JUDGES = ("memory_prior", "answer_format", "agreement", "verifier")
# Above any confidence: the graph calls every level it planned, so each level's judge
# signals are recorded once and any lower threshold is replayed from them.
NEVER_RETURN = 1.01


class JudgesCommandError(ValueError):
    pass


# --- setting up -------------------------------------------------------------------------------


@dataclass
class Session:
    records: RecordSet
    resources: RouterResources
    context: Context
    router_dir: Path
    judges: tuple[str, ...]
    concurrency: int


def _session(args: argparse.Namespace) -> Session:
    records = load_dataset(
        dataset=args.dataset,
        recordings=args.recordings,
        data_dir=args.data_dir,
    )
    router_dir = Path(args.router_dir) if args.router_dir else default_router_dir(records.name)
    judges = _judge_list(args)
    context = Context(
        dataset=None if args.recordings else args.dataset,
        recordings=str(args.recordings) if args.recordings else None,
        pool=str(args.pool) if args.pool else None,
        router_dir=str(router_dir),
        record_outcomes=False,
        judges=judges,
        llm_judge=args.llm_judge,
        judge_pool=str(args.judge_pool) if args.judge_pool else None,
    )
    resources = load_resources(context)
    _check_memory_holds_no_held_out(resources, records, router_dir)
    # Hand the loaded resources to every run, so the graph uses what this command trains.
    context = dataclasses.replace(context, resources=resources)
    return Session(records, resources, context, router_dir, judges, args.concurrency)


def _judge_list(args: argparse.Namespace) -> tuple[str, ...]:
    names = [n.strip() for n in (args.judges or ",".join(OFFLINE_JUDGES)).split(",") if n.strip()]
    if args.llm_judge and "llm" not in names:
        names.append("llm")
    if "llm" in names and not args.llm_judge:
        raise JudgesCommandError(
            "the 'llm' judge needs a model. Fix: pass --llm-judge MODEL (and --judge-pool FILE "
            "when it is not in the answering pool)."
        )
    for name in names:
        try:
            get_judge(name)
        except KeyError as exc:
            raise JudgesCommandError(f"--judges: {exc.args[0]}") from None
    if len(set(names)) != len(names):
        raise JudgesCommandError(f"--judges lists a judge twice: {names}")
    return tuple(names)


def _check_memory_holds_no_held_out(
    resources: RouterResources, records: RecordSet, router_dir: Path
) -> None:
    """Judges are fitted on validation and measured on test: neither may be in the memory."""
    held_out = {r.id for r in records.split("validation", "test")}
    leaked = [q for q in resources.memory.query_ids if q in held_out]
    if leaked:
        raise JudgesCommandError(
            f"the memory in {router_dir} holds {len(leaked)} validation/test queries (e.g. "
            f"{leaked[0]!r}), which would leak their labels. Fix: rebuild it from train only: "
            f"`emafusion memory build --dataset {records.name} --calibrate-on validation "
            f"--out {router_dir}`."
        )


# --- collecting judge signals from the real graph ---------------------------------------------


async def _run(records: Sequence[Record], context: Context, concurrency: int) -> list[QueryResult]:
    return await run_graph(records, context, concurrency=concurrency, keep_trace=True)


def collect_traces(session: Session, split: Split, judges: Sequence[str]) -> CascadeTraces:
    """Every level of every cascade on `split`, judged by `judges` (one graph run)."""
    records = session.records.split(split)
    context = dataclasses.replace(
        session.context,
        judges=tuple(judges),
        combiner="static",
        escalation_threshold=NEVER_RETURN,
        budget_usd=None,
    )
    started = time.perf_counter()
    results = asyncio.run(_run(records, context, session.concurrency))
    _note(f"graph: {len(records):,} {split} queries, every level, in {_since(started)}")
    return traces_from_results(records, results, judges)


def traces_from_results(
    records: Sequence[Record], results: Sequence[QueryResult], judges: Sequence[str]
) -> CascadeTraces:
    every = [[e["data"] for e in r.trace if e["event"] == "judged"] for r in results]
    judged = [[d for d in events if d["status"] == "answered"] for events in every]
    levels = max((len(j) for j in judged), default=0)
    shape = (len(records), levels)
    scores = np.full((*shape, len(judges)), np.nan)
    final_scores = np.full((*shape, len(judges)), np.nan)
    judge_costs = np.zeros((*shape, len(judges)))
    model_costs = np.zeros(shape)
    correct = np.zeros(shape)
    answered = np.zeros(shape, dtype=bool)
    for q, (record, events) in enumerate(zip(records, judged, strict=True)):
        for level, data in enumerate(events):
            answered[q, level] = True
            model_costs[q, level] = data["model_cost_usd"]
            outcome = record.outcomes.get(data["model"])
            correct[q, level] = outcome.score if outcome is not None else 0.0
            for j, judge in enumerate(judges):
                score = data["judges"].get(judge)
                scores[q, level, j] = np.nan if score is None else score
                judge_costs[q, level, j] = data["judge_costs"].get(judge, 0.0)
        # Scores as they stood after the last attempt (agreement re-scored by decide).
        if every[q]:
            now = every[q][-1]["scores_now"]
            answered_at = [i for i, d in enumerate(every[q]) if d["status"] == "answered"]
            for level, i in enumerate(answered_at):
                for j, judge in enumerate(judges):
                    score = now[i].get(judge)
                    final_scores[q, level, j] = np.nan if score is None else score
    return CascadeTraces(
        tuple(judges),
        scores,
        judge_costs,
        model_costs,
        correct,
        answered,
        tuple(r.id for r in records),
        final_scores,
    )


# --- training ----------------------------------------------------------------------------------


def _train_verifier(session: Session) -> LearnedVerifier:
    train = session.records.split("train")
    embedder = session.resources.embedder
    vectors = embed_records(train, embedder)
    started = time.perf_counter()
    verifier = train_verifier(train, vectors, session.resources.memory, embedder.id)
    held_out = session.records.split("validation")
    prior, score, labels = verifier_vs_prior(session.resources, verifier, held_out)
    verifier.info["validation_auroc"] = {
        "verifier": auroc(score, labels),
        "prior": auroc(prior, labels),
    }
    verifier.save(session.router_dir)
    session.resources.verifier = verifier
    info = verifier.info
    print(
        f"verifier: {info['trained_on']['pairs']:,} (query, model, response) pairs of "
        f"{len(train):,} train queries, {info['iterations']} trees, {_since(started)} -> "
        f"{session.router_dir}"
    )
    print(
        f"  validation AUROC of correctness: verifier {auroc(score, labels):.4f}, memory prior "
        f"{auroc(prior, labels):.4f} ({len(labels):,} pairs)"
    )
    return verifier


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


@dataclass
class Fitted:
    book: CombinerBook
    selection: JudgeSelection
    ece_static: float
    ece_learned: float


def fit_judges(session: Session, val: CascadeTraces) -> Fitted:
    signals = val.signals()
    book = fit_book(signals)
    selection = select_judges(signals)
    static = static_confidence(signals.scores, signals.judges, session.context.judge_weights)
    learned = cross_validated(signals)
    fitted = Fitted(
        book,
        selection,
        _ece(static, signals.labels),
        expected_calibration_error(learned, signals.labels),
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


def _print_fitted(fitted: Fitted, signals_count: int, judges: Sequence[str]) -> None:
    print(
        f"combiner: logistic on judge log-odds, one per judge subset "
        f"({len(fitted.book.combiners)}), fitted on {signals_count:,} validation answers"
    )
    full = fitted.book.get(judges)
    weights = ", ".join(f"{j} {w:+.3f}" for j, w in zip(full.judges, full.weights, strict=True))
    print(f"  weights of {'+'.join(full.judges)}: {weights}, intercept {full.intercept:+.3f}")
    print(
        f"  validation ECE: static mean {fitted.ece_static:.4f} -> learned "
        f"{fitted.ece_learned:.4f} (5-fold cross-validated)"
    )
    _print_selection(fitted.selection)


def _print_selection(selection: JudgeSelection) -> None:
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


def cmd_judges_train(args: argparse.Namespace) -> int:
    session = _session(args)
    print(
        f"{session.records.name}: judges {', '.join(session.judges)}; router {session.router_dir}"
    )
    if "verifier" in session.judges:
        _train_verifier(session)
    val = collect_traces(session, "validation", session.judges)
    fitted = fit_judges(session, val)
    _print_fitted(fitted, int(val.answered.sum()), session.judges)
    goal = _goal(args) or _default_goal(session)
    # The recommended settings use the selected judges; `judges threshold` gives any other set.
    selected = fitted.selection.selected
    traces = val.select(selected)
    confidence, fallback = _learned_confidence(traces, fitted.book, selected)
    choice = select_threshold(traces, confidence, goal, fallback)
    _print_choice("learned", choice, selected)
    return 0


# --- thresholds --------------------------------------------------------------------------------


def _goal(args: argparse.Namespace) -> Goal | None:
    if args.target_accuracy is not None:
        return Goal("target_accuracy", args.target_accuracy)
    if args.max_cost_per_1k is not None:
        return Goal("max_cost_per_1k", args.max_cost_per_1k)
    if args.max_escalation_rate is not None:
        return Goal("max_escalation_rate", args.max_escalation_rate)
    return None


def _learned_confidence(
    traces: CascadeTraces, book: CombinerBook, judges: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(confidence when judged, confidence after the last level) per level."""
    combiner = book.get(judges)
    chosen = traces.select(combiner.judges)
    return chosen.confidence(combiner.predict), chosen.final_confidence(combiner.predict)


def _static_confidence(
    traces: CascadeTraces, judges: Sequence[str], weights: dict[str, float]
) -> tuple[np.ndarray, np.ndarray]:
    chosen = traces.select(judges)

    def combine(s: np.ndarray) -> np.ndarray:
        return static_confidence(s, judges, weights)

    return chosen.confidence(combine), chosen.final_confidence(combine)


def _default_goal(session: Session) -> Goal:
    """The paper's aim: the best single model's validation accuracy, for less."""
    singles = _single_models(session.records.split("validation"), session.resources)
    best = max((accuracy for _, accuracy, _ in singles), default=1.0)
    return Goal("target_accuracy", round(best, 4))


def _print_choice(combiner: str, choice: ThresholdChoice, judges: Sequence[str]) -> None:
    r = choice.result
    met = "" if choice.met else " (goal not reachable: closest point)"
    print(f"threshold for goal: {choice.goal.describe()}{met}")
    print(
        f"  validation: accuracy {r.accuracy:.4f}, ${r.cost_per_1k:.4f} per 1k queries, "
        f"escalation rate {r.escalation_rate:.1%}, {r.mean_levels:.2f} models per query"
    )
    print(
        f"  Context(judges={tuple(judges)!r}, combiner={combiner!r}, "
        f"escalation_threshold={choice.threshold:.4f})"
    )


def cmd_judges_threshold(args: argparse.Namespace) -> int:
    session = _session(args)
    goal = _goal(args)
    if goal is None:
        raise JudgesCommandError(
            "no goal. Fix: pass --target-accuracy, --max-cost-per-1k or --max-escalation-rate."
        )
    _need_trained(session, args.combiner)
    val = collect_traces(session, "validation", session.judges)
    if args.combiner == "learned":
        assert session.resources.combiners is not None
        confidence = _learned_confidence(val, session.resources.combiners, session.judges)
    else:
        confidence = _static_confidence(val, session.judges, session.context.judge_weights)
    conf, final = confidence
    _print_choice(args.combiner, select_threshold(val, conf, goal, final), session.judges)
    return 0


def _need_trained(session: Session, combiner: str) -> None:
    missing = []
    if "verifier" in session.judges and session.resources.verifier is None:
        missing.append("verifier")
    book = session.resources.combiners
    if combiner == "learned" and (book is None or subset_key(session.judges) not in book.combiners):
        missing.append(f"combiner for {'+'.join(session.judges)}")
    if missing:
        raise JudgesCommandError(
            f"{session.router_dir} has no {' and no '.join(missing)}. Fix: run `emafusion judges "
            f"train --dataset {session.records.name} --router-dir {session.router_dir}` first."
        )


# --- the report --------------------------------------------------------------------------------


def _ece(probs: np.ndarray, labels: np.ndarray) -> float:
    known = ~np.isnan(probs)
    return expected_calibration_error(probs[known], labels[known]) if known.any() else float("nan")


def _auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    known = ~np.isnan(scores)
    return auroc(scores[known], labels[known]) if known.any() else float("nan")


def _print_judge_table(
    test: CascadeTraces, signals: JudgeSignals, static: np.ndarray, learned: np.ndarray
) -> None:
    n_queries = len(test)
    print(
        f"\n## Judges on test: every level of every cascade ({len(signals):,} answers to "
        f"{n_queries:,} queries; {signals.labels.mean():.1%} right)"
    )
    print(f"{'judge':<26} {'spoke':>7} {'AUROC':>7} {'ECE':>7} {'$/1k answers':>13}")
    costs = signals.cost_per_1k()
    for j, judge in enumerate(signals.judges):
        scores = signals.scores[:, j]
        spoke = ~np.isnan(scores)
        print(
            f"{judge:<26} {spoke.mean():>7.1%} {_auroc(scores, signals.labels):>7.4f} "
            f"{_ece(scores, signals.labels):>7.4f} {costs[judge]:>13.4f}"
        )
    total = sum(costs.values())
    for name, probs in (("combined: static mean", static), ("combined: learned", learned)):
        print(
            f"{name:<26} {(~np.isnan(probs)).mean():>7.1%} {_auroc(probs, signals.labels):>7.4f} "
            f"{_ece(probs, signals.labels):>7.4f} {total:>13.4f}"
        )
    print(
        "spoke: share of answers the judge scored (agreement abstains on first levels). "
        "ECE: 10 equal-width bins."
    )


@dataclass
class CascadeRow:
    name: str
    judges: tuple[str, ...]
    combiner: str
    choice: ThresholdChoice
    graph: CascadeResult
    replay: CascadeResult


def _graph_result(
    session: Session,
    judges: Sequence[str],
    combiner: Literal["static", "learned"],
    threshold: float,
    split: Split,
) -> tuple[CascadeResult, list[QueryResult]]:
    records = session.records.split(split)
    context = dataclasses.replace(
        session.context,
        judges=tuple(judges),
        combiner=combiner,
        escalation_threshold=threshold,
        budget_usd=None,
    )
    started = time.perf_counter()
    results = asyncio.run(_run(records, context, session.concurrency))
    _note(f"graph: {len(records):,} {split} queries, {'+'.join(judges)}, in {_since(started)}")
    levels = np.array([r.models_called for r in results])
    return (
        CascadeResult(
            threshold=threshold,
            accuracy=float(np.mean([r.correct for r in results])),
            cost_per_1k=float(np.mean([r.cost_usd for r in results])) * 1000.0,
            escalation_rate=float(np.mean([r.escalated for r in results])),
            mean_levels=float(levels.mean()),
            levels=levels,
            chosen=np.zeros(0),
        ),
        results,
    )


def _single_models(
    records: Sequence[Record], resources: RouterResources
) -> list[tuple[str, float, float]]:
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


def cmd_judges_report(args: argparse.Namespace) -> int:
    session = _session(args)
    records = session.records
    judges = session.judges
    sizes = records.split_sizes()
    print(
        f"# Judges report: {records.name} (train {sizes['train']:,} / validation "
        f"{sizes['validation']:,} / test {sizes['test']:,} queries; router {session.router_dir})"
    )
    book = session.resources.combiners
    if "verifier" in judges and session.resources.verifier is None:
        print("no trained verifier in the router directory: training it now")
        _train_verifier(session)
        book = None  # a combiner fitted without this verifier's scores is stale
    val = collect_traces(session, "validation", judges)
    if book is None or subset_key(judges) not in book.combiners:
        print("no combiner fitted for these judges in the router directory: fitting it now")
        fit_judges(session, val)
    book = session.resources.combiners
    assert book is not None
    weights = session.context.judge_weights
    test = collect_traces(session, "test", judges)

    # Confidence quality, on the test split.
    signals = test.signals()
    static_test = static_confidence(signals.scores, judges, weights)
    learned_test = book.get(judges).predict(signals.select(book.get(judges).judges).scores)
    _print_judge_table(test, signals, static_test, learned_test)
    print(
        f"calibration (ECE, test): static mean {_ece(static_test, signals.labels):.4f} -> "
        f"learned {_ece(learned_test, signals.labels):.4f}"
    )
    _print_reliability(learned_test, signals.labels)

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
    goal = _goal(args) or _default_goal(session)
    print("\n## Cascade on test: the real graph at thresholds chosen on validation")
    default = "" if _goal(args) else " (default: the best single model's validation accuracy)"
    print(f"goal: {goal.describe()}{default}")
    configs: list[tuple[str, tuple[str, ...], Literal["static", "learned"]]] = [
        ("all judges, static mean", judges, "static"),
        ("all judges, learned", judges, "learned"),
    ]
    if len(judges) > 1:
        for judge in judges:
            rest = tuple(j for j in judges if j != judge)
            configs.append((f"learned, without {judge}", rest, "learned"))
    rows = []
    for name, subset, combiner in configs:
        confidences = []
        for traces in (val.select(subset), test.select(subset)):
            confidences.append(
                _learned_confidence(traces, book, subset)
                if combiner == "learned"
                else _static_confidence(traces, subset, weights)
            )
        (val_conf, val_final), (test_conf, test_final) = confidences
        choice = select_threshold(val.select(subset), val_conf, goal, val_final)
        replay = simulate(test.select(subset), test_conf, choice.threshold, test_final)
        graph_result, _ = _graph_result(session, subset, combiner, choice.threshold, "test")
        rows.append(CascadeRow(name, subset, combiner, choice, graph_result, replay))
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
        "first). d: against all judges, learned. The replay of the test traces (what threshold "
        f"selection uses) matches these graph runs within {drift:.1e}."
    )
    test_records = records.split("test")
    singles = _single_models(test_records, session.resources)
    if singles:
        best = max(singles, key=lambda s: s[1])
        print(
            f"reference: best single model on test {best[0]} accuracy {best[1]:.4f} at "
            f"${best[2]:.4f} per 1k queries"
        )
    print()
    _print_selection(select_judges(val.signals()))
    return 0


def _print_reliability(probs: np.ndarray, labels: np.ndarray) -> None:
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


# --- argparse -----------------------------------------------------------------------------------


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _since(started: float) -> str:
    return f"{time.perf_counter() - started:.1f} s"


def _common(parser: argparse.ArgumentParser) -> None:
    add_source_args(parser, skip_invalid=False)
    parser.add_argument(
        "--router-dir", type=Path, metavar="DIR", help="memory, verifier, combiner (default: cache)"
    )
    parser.add_argument(
        "--judges",
        metavar="A,B,...",
        help=f"judges to train and measure (default: {','.join(OFFLINE_JUDGES)})",
    )
    parser.add_argument("--llm-judge", metavar="MODEL", help="add the 'llm' judge, asking MODEL")
    parser.add_argument("--judge-pool", type=Path, metavar="FILE", help="pool file of judge models")
    parser.add_argument("--concurrency", type=int, default=8, help="queries in flight")


def _goals(parser: argparse.ArgumentParser) -> None:
    goal = parser.add_mutually_exclusive_group()
    goal.add_argument("--target-accuracy", type=float, metavar="FRACTION")
    goal.add_argument("--max-cost-per-1k", type=float, metavar="USD")
    goal.add_argument("--max-escalation-rate", type=float, metavar="FRACTION")


def add_judges_commands(commands: argparse._SubParsersAction) -> None:
    judges = commands.add_parser("judges", help="judges: train verifier + combiner, report")
    actions = judges.add_subparsers(dest="judges_command", metavar="ACTION", required=True)

    train = actions.add_parser(
        "train", help="train the verifier (train split) and fit the combiner (validation)"
    )
    _common(train)
    _goals(train)
    train.set_defaults(handler=cmd_judges_train)

    report = actions.add_parser(
        "report", help="per-judge AUROC/ECE/cost, static vs learned, ablation (test split)"
    )
    _common(report)
    _goals(report)
    report.set_defaults(handler=cmd_judges_report)

    threshold = actions.add_parser("threshold", help="the threshold meeting a goal (validation)")
    _common(threshold)
    _goals(threshold)
    threshold.add_argument("--combiner", choices=("static", "learned"), default="learned")
    threshold.set_defaults(handler=cmd_judges_threshold)
