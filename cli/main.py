"""The `emafusion` command line: argparse, and a handler per command (in its module)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from emafusion.cli.ask import add_ask_commands
from emafusion.cli.data import add_data_commands
from emafusion.cli.eval import add_eval_commands
from emafusion.cli.feedback import add_feedback_commands
from emafusion.cli.judges import add_judges_commands
from emafusion.cli.memory import add_memory_commands
from emafusion.cli.serve import add_serve_commands
from emafusion.cli.stream import add_stream_commands

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emafusion",
        description="A self-optimizing LLM router built as a LangGraph graph.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    add_data_commands(commands)
    add_memory_commands(commands)
    add_judges_commands(commands)
    add_ask_commands(commands)
    add_eval_commands(commands)
    add_feedback_commands(commands)
    add_serve_commands(commands)
    add_stream_commands(commands)
    return parser


def _single_query_threads() -> None:
    """The router searches one query at a time: on small shared machines, waking FAISS's
    OpenMP threads for each search costs more than the search itself (see bench/memory.py).
    """
    import faiss

    if "OMP_NUM_THREADS" not in os.environ:
        faiss.omp_set_num_threads(1)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Past parsing: a command runs (help has exited), so its libraries may load now.
    from emafusion.stores.download import DataError
    from emafusion.stores.pool import PoolError

    _single_query_threads()
    handler: Handler = args.handler
    try:
        return handler(args)
    except (DataError, PoolError, ValueError) as exc:
        print(f"emafusion: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
