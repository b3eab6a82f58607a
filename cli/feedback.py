"""`emafusion feedback`: a user's score for an answer, stored as ground truth."""

from __future__ import annotations

import argparse
from pathlib import Path

from emafusion.cli.sources import add_source_args, add_store_url_arg, deployment_from_args


def cmd_feedback(args: argparse.Namespace) -> int:
    from emafusion.nodes.feedback import submit_feedback
    from emafusion.nodes.resources import load_router

    resources = load_router(deployment_from_args(args, persist_outcomes=True))
    receipt = submit_feedback(
        resources, args.run_id, args.score, args.model, query_id=args.query_id
    )
    where = "appended to the outcome log" if receipt.durable else "kept in memory"
    print(
        f"feedback: {receipt.model} on {receipt.query_id} scored {receipt.score:g} "
        f"(ground truth, {where})"
    )
    return 0


def add_feedback_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "feedback", help="score an answer (ground truth the router learns from)"
    )
    add_source_args(parser, skip_invalid=False)
    parser.add_argument("--router-dir", type=Path, required=True, metavar="DIR")
    add_store_url_arg(parser)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--run-id", help="the run id `ask` (or the server) printed")
    target.add_argument("--query-id", help="a query id the memory holds (then --model)")
    parser.add_argument("--model", help="the model the score is for (default: the one returned)")
    parser.add_argument("--score", type=float, required=True, help="1 = right, 0 = wrong")
    parser.set_defaults(handler=cmd_feedback)
