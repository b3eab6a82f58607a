"""`emafusion stream`: the router learning from its own traffic on a replayed stream."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path

from emafusion.cli.sources import add_source_args, deployment_from_args, load_records, pool_for


def cmd_stream(args: argparse.Namespace) -> int:
    from emafusion.evals.stream import SCENARIOS, StreamSettings, run_scenario
    from emafusion.evals.stream_report import markdown, summary, write
    from emafusion.nodes.resources import RouterResources, load_router
    from emafusion.stores.artifacts import ROUTER_MANIFEST, default_router_dir
    from emafusion.stores.pool import PoolError

    assert args.scenario in SCENARIOS
    settings = StreamSettings(
        scenario=args.scenario,
        feedback=args.feedback,
        seed=args.seed,
        window=args.window,
        limit=args.limit,
        concurrency=args.concurrency,
        drift_at=args.drift_at,
        drift_model=args.drift_model,
        drift_share=args.drift_share,
        new_model=args.new_model,
        category=args.category,
        context={
            k: v
            for k, v in (
                ("novel_queries", args.novel_queries),
                ("exploration_rate", args.exploration_rate),
            )
            if v is not None
        },
    )
    started = time.perf_counter()
    records = load_records(args)
    pool = pool_for(args, records)
    if pool is None:
        raise PoolError("no pool for these recordings. Fix: pass --pool FILE.toml.")
    source = args.router_dir or default_router_dir(records.name)
    with tempfile.TemporaryDirectory(prefix="emafusion-stream-") as scratch:
        # Never write into the user's router: every run starts from its own copy (or from
        # one built from train here when there is none).
        base = Path(scratch) / "base"
        if (source / ROUTER_MANIFEST).is_file():
            print(f"router: a copy of {source}")
            shutil.copytree(source, base)
        else:
            print(f"router: none in {source}; building one from train (in a temporary dir)")
            base.mkdir()
            load_router(deployment_from_args(args, router_dir=base))
        copies = iter(range(1_000))

        def fresh() -> RouterResources:
            target = Path(scratch) / f"run-{next(copies)}"
            shutil.copytree(base, target)
            return load_router(deployment_from_args(args, router_dir=target))

        run = asyncio.run(run_scenario(fresh, records, pool, settings))
    results = summary(run)
    results["wall_s"] = round(time.perf_counter() - started, 1)
    results["router_source"] = str(source)
    out = args.out or Path("results") / "stream" / records.name
    paths = write(results, out)
    print(markdown(results))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def add_stream_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "stream",
        help="replay validation + test as a stream: the router learns from its own traffic",
    )
    add_source_args(parser)
    parser.add_argument(
        "--scenario",
        choices=("warm", "drift", "new-model", "cold", "unseen-category"),
        default="warm",
    )
    parser.add_argument(
        "--category", help="unseen-category: the category withheld (default: the largest)"
    )
    parser.add_argument(
        "--novel-queries",
        choices=("plan", "strongest"),
        help="the run setting for queries unlike every stored one (default: Context's)",
    )
    parser.add_argument(
        "--exploration-rate",
        type=float,
        help="the run setting: share of queries that may try an unproven model",
    )
    parser.add_argument(
        "--feedback",
        type=float,
        default=0.0,
        help="share of answers given ground-truth feedback (0: judged outcomes only)",
    )
    parser.add_argument(
        "--router-dir",
        type=Path,
        help="the router to start from (copied, never written; default: the user cache; "
        "none there: one is built from train in a temporary directory)",
    )
    parser.add_argument("--out", type=Path, help="default: results/stream/<dataset>/")
    parser.add_argument("--seed", type=int, default=0, help="the stream's order")
    parser.add_argument("--window", type=int, default=200, help="queries per window")
    parser.add_argument("--limit", type=int, default=0, help="only the first N stream queries")
    parser.add_argument("--concurrency", type=int, default=4, help="queries routed at once")
    parser.add_argument(
        "--drift-at", type=int, help="drift / new-model: the query T it starts at (default N/3)"
    )
    parser.add_argument(
        "--drift-model", help="drift: the model that degrades (default: the most used before T)"
    )
    parser.add_argument(
        "--drift-share", type=float, default=0.5, help="drift: share of its answers made wrong"
    )
    parser.add_argument(
        "--new-model", help="new-model: the model that joins at T (default: best on train)"
    )
    parser.set_defaults(handler=cmd_stream)
