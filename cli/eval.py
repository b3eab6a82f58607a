"""`emafusion eval`: the project's main job."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from emafusion.cli.sources import add_source_args, load_records, pool_for, taxonomy_for
from emafusion.evals.experiment import Evaluation, limit_records
from emafusion.evals.report import markdown, write_results
from emafusion.stores.artifacts import default_router_dir
from emafusion.stores.embeddings import default_embedder
from emafusion.stores.pool import PoolError


def _progress(label: str, total: int) -> Callable[[int], None]:
    bar = tqdm(total=total, desc=label, unit="q", leave=False, dynamic_ncols=True)

    def tick(n: int) -> None:
        bar.update(n)
        if bar.n >= total:
            bar.close()

    return tick


def cmd_eval(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    records = load_records(args)
    if args.limit:
        records = limit_records(records, args.limit)
    pool = pool_for(args, records)
    if pool is None:
        raise PoolError("no pool for these recordings. Fix: pass --pool FILE.toml.")
    pool.check_recordings(records)
    evaluation = Evaluation(
        records=records,
        pool=pool,
        embedder=default_embedder(),
        taxonomy=taxonomy_for(args, records),
        concurrency=args.concurrency,
        progress=None if args.no_progress else _progress,
        router_dir=args.router_dir or default_router_dir(records.name),
    )
    results = asyncio.run(evaluation.run(args.split))
    results["wall_s"] = round(time.perf_counter() - started, 1)
    out = args.out or Path("results") / records.name
    paths = write_results(results, out)
    print(markdown(results))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def add_eval_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "eval", help="the main job: the router vs single models and baselines on recordings"
    )
    add_source_args(parser)
    parser.add_argument("--taxonomy", type=Path)
    parser.add_argument("--split", choices=("test", "validation"), default="test")
    parser.add_argument("--out", type=Path, help="default: results/<dataset>/")
    parser.add_argument(
        "--router-dir",
        type=Path,
        help="where the evaluated router (memory, classifier, fusion model, presets) is "
        "written for serving (default: the user cache, where `ask` and the server look)",
    )
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument(
        "--limit",
        type=int,
        default=0,
        help="use only the first N records of each split (smoke runs; not for reported figures)",
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(handler=cmd_eval)
