"""`emafusion judges train|report|evidence|threshold`: the judge ensemble, trained and measured.

- train: the learned verifier on the train split (saved beside the memory), then a graph
  run over the validation split that calls every level of every cascade, whose judge
  signals fit a calibrated combiner per judge subset and choose the judges.
- report: see `emafusion.evals.judges_report`.
- evidence: what a judged outcome counts in the memory (`emafusion.stores.judged`).
- threshold: the escalation threshold that meets a goal on validation, as Context settings.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from emafusion.cli.sources import add_source_args, deployment_from_args
from emafusion.graph.context import Context

# What a command needs is imported when it runs: `emafusion --help` stays fast.
if TYPE_CHECKING:
    from emafusion.train.judges import (
        Fitted,
        JudgesSession,
    )
    from emafusion.train.threshold import Goal, ThresholdChoice


def _session(args: argparse.Namespace) -> JudgesSession:
    from emafusion.graph.router import make_graph
    from emafusion.nodes.resources import load_router
    from emafusion.stores.artifacts import default_router_dir
    from emafusion.stores.recordings import load_dataset
    from emafusion.train.judges import (
        JudgesSession,
        check_memory_holds_no_held_out,
    )

    records = load_dataset(dataset=args.dataset, recordings=args.recordings, data_dir=args.data_dir)
    router_dir = Path(args.router_dir) if args.router_dir else default_router_dir(records.name)
    judges = _judge_list(args)
    resources = load_router(deployment_from_args(args, router_dir=router_dir))
    check_memory_holds_no_held_out(resources, records, router_dir)
    context = Context(record_outcomes=False, judges=judges, llm_judge=args.llm_judge)
    return JudgesSession(
        records, resources, make_graph(resources), context, router_dir, judges, args.concurrency
    )


def _judge_list(args: argparse.Namespace) -> tuple[str, ...]:
    from emafusion.nodes.judges import UnknownJudgeError, get_judge
    from emafusion.train.judge_names import OFFLINE_JUDGES
    from emafusion.train.judges import JudgesError

    names = [n.strip() for n in (args.judges or ",".join(OFFLINE_JUDGES)).split(",") if n.strip()]
    if args.llm_judge and "llm" not in names:
        names.append("llm")
    if "llm" in names and not args.llm_judge:
        raise JudgesError(
            "the 'llm' judge needs a model. Fix: pass --llm-judge MODEL (and --judge-pool FILE "
            "when it is not in the answering pool)."
        )
    for name in names:
        try:
            get_judge(name)
        except UnknownJudgeError as exc:
            raise JudgesError(f"--judges: {exc}") from None
    if len(set(names)) != len(names):
        raise JudgesError(f"--judges lists a judge twice: {names}")
    return tuple(names)


def _goal(args: argparse.Namespace) -> Goal | None:
    from emafusion.train.threshold import Goal

    if args.target_accuracy is not None:
        return Goal("target_accuracy", args.target_accuracy)
    if args.max_cost_per_1k is not None:
        return Goal("max_cost_per_1k", args.max_cost_per_1k)
    if args.max_escalation_rate is not None:
        return Goal("max_escalation_rate", args.max_escalation_rate)
    return None


def _print_fitted(fitted: Fitted, judges: Sequence[str]) -> None:
    from emafusion.evals.judges_report import print_selection

    print(
        f"combiner: logistic on judge log-odds, one per judge subset "
        f"({len(fitted.book.combiners)}), fitted on {fitted.answers:,} validation answers"
    )
    full = fitted.book.get(judges)
    weights = ", ".join(f"{j} {w:+.3f}" for j, w in zip(full.judges, full.weights, strict=True))
    print(f"  weights of {'+'.join(full.judges)}: {weights}, intercept {full.intercept:+.3f}")
    print(
        f"  validation ECE: static mean {fitted.ece_static:.4f} -> learned "
        f"{fitted.ece_learned:.4f} (5-fold cross-validated)"
    )
    print_selection(fitted.selection)


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


def cmd_judges_train(args: argparse.Namespace) -> int:
    from emafusion.train.judges import (
        cascade_views,
        collect_traces,
        default_goal,
        fit_judges,
        threshold_settings,
        train_and_save_verifier,
    )
    from emafusion.train.threshold import select_threshold

    session = _session(args)
    print(
        f"{session.records.name}: judges {', '.join(session.judges)}; router {session.router_dir}"
    )
    if "verifier" in session.judges:
        started = time.perf_counter()
        verifier = train_and_save_verifier(session)
        info = verifier.info
        print(
            f"verifier: {info['trained_on']['pairs']:,} (query, model, response) pairs, "
            f"{info['iterations']} trees, {time.perf_counter() - started:.1f} s -> "
            f"{session.router_dir}; validation AUROC verifier "
            f"{info['validation_auroc']['verifier']:.4f}, memory prior "
            f"{info['validation_auroc']['prior']:.4f}"
        )
    val, seconds = collect_traces(session, "validation", session.judges)
    print(f"graph: {len(val):,} validation queries, every level, in {seconds:.1f} s")
    fitted = fit_judges(session, val)
    _print_fitted(fitted, session.judges)
    goal = _goal(args) or default_goal(session)
    # The recommended settings use the selected judges; `judges threshold` gives any other set.
    selected = fitted.selection.selected
    views = cascade_views(val, selected, "learned", fitted.book, session.context.judge_weights)
    choice = select_threshold(val, views, goal, threshold_settings(session.context))
    _print_choice("learned", choice, selected)
    return 0


def cmd_judges_threshold(args: argparse.Namespace) -> int:
    from emafusion.train.judges import (
        JudgesError,
        cascade_views,
        collect_traces,
        threshold_settings,
    )
    from emafusion.train.threshold import select_threshold

    session = _session(args)
    goal = _goal(args)
    if goal is None:
        raise JudgesError(
            "no goal. Fix: pass --target-accuracy, --max-cost-per-1k or --max-escalation-rate."
        )
    _need_trained(session, args.combiner)
    val, _ = collect_traces(session, "validation", session.judges)
    views = cascade_views(
        val,
        session.judges,
        args.combiner,
        session.resources.combiners,
        session.context.judge_weights,
    )
    choice = select_threshold(val, views, goal, threshold_settings(session.context))
    _print_choice(args.combiner, choice, session.judges)
    return 0


def _need_trained(session: JudgesSession, combiner: str) -> None:
    from emafusion.stores.combiner import subset_key
    from emafusion.train.judges import (
        JudgesError,
    )

    missing = []
    if "verifier" in session.judges and session.resources.verifier is None:
        missing.append("verifier")
    book = session.resources.combiners
    if combiner == "learned" and (book is None or subset_key(session.judges) not in book.combiners):
        missing.append(f"combiner for {'+'.join(session.judges)}")
    if missing:
        raise JudgesError(
            f"{session.router_dir} has no {' and no '.join(missing)}. Fix: run `emafusion judges "
            f"train --dataset {session.records.name} --router-dir {session.router_dir}` first."
        )


def cmd_judges_report(args: argparse.Namespace) -> int:
    from emafusion.evals.judges_report import report
    from emafusion.train.judges import (
        default_goal,
    )

    session = _session(args)
    goal = _goal(args)
    report(session, goal or default_goal(session), goal_is_default=goal is None)
    return 0


def cmd_judges_evidence(args: argparse.Namespace) -> int:
    """What the router's judged outcomes are worth, measured on validation (ROUTER.json)."""
    import asyncio

    from emafusion.nodes import settings
    from emafusion.stores.artifacts import RouterArtifacts
    from emafusion.train.judged_evidence import describe, measure_router

    session = _session(args)
    context = settings.resolve(Context(preset=args.preset), session.resources)
    held_out = session.records.split("validation")
    evidence = asyncio.run(
        measure_router(session.resources, held_out, context, "validation", args.concurrency)
    )
    print(describe(evidence))
    manifest = RouterArtifacts.set_manifest_entry(session.router_dir, "judged", evidence.to_json())
    print(f"written to {manifest}")
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    from emafusion.train.judge_names import OFFLINE_JUDGES  # a leaf: help stays light

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

    report_parser = actions.add_parser(
        "report", help="per-judge AUROC/ECE/cost, static vs learned, ablation (test split)"
    )
    _common(report_parser)
    _goals(report_parser)
    report_parser.set_defaults(handler=cmd_judges_report)

    evidence = actions.add_parser(
        "evidence",
        help="what judged outcomes count in the memory: the preset's beliefs against "
        "validation labels (written to ROUTER.json)",
    )
    _common(evidence)
    evidence.add_argument(
        "--preset", default="default", help="the preset whose judging is measured"
    )
    evidence.set_defaults(handler=cmd_judges_evidence)

    threshold = actions.add_parser("threshold", help="the threshold meeting a goal (validation)")
    _common(threshold)
    _goals(threshold)
    threshold.add_argument("--combiner", choices=("static", "learned"), default="learned")
    threshold.set_defaults(handler=cmd_judges_threshold)
