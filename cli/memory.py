"""`emafusion memory build|report|compact|migrate`: the learned router's memory.

build and report work from recordings; compact folds a memory's outcome log into a new
generation (a router directory's, or a shared one in PostgreSQL); migrate brings a
PostgreSQL database to this release's schema.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from emafusion.cli.sources import (
    add_source_args,
    add_store_url_arg,
    load_records,
    pool_for,
    taxonomy_for,
)

if TYPE_CHECKING:
    from emafusion.stores.artifacts import RouterArtifacts
    from emafusion.stores.embeddings import Embedder
    from emafusion.stores.recordings import RecordSet


def cmd_memory_build(args: argparse.Namespace) -> int:
    from emafusion.stores.artifacts import build_router_artifacts
    from emafusion.stores.embeddings import default_embedder
    from emafusion.stores.memory import MemorySettings

    records = load_records(args)
    splits = tuple(args.split or ["train"])
    embedder = default_embedder()
    artifacts = build_router_artifacts(
        records,
        embedder,
        taxonomy_for(args, records),
        pool_for(args, records),
        splits=splits,
        calibrate_on=args.calibrate_on,
        settings=MemorySettings(index_kind=args.index),
    )
    if args.calibrate_on is not None:
        measure_judged_evidence(args, records, embedder, artifacts)
    artifacts.save(args.out)
    memory = artifacts.memory
    print(
        f"memory: {len(memory):,} queries x {len(memory.models)} models from "
        f"{records.name} split(s) {', '.join(splits)} -> {args.out}"
    )
    calibration = artifacts.info.get("classifier_calibration")
    if calibration:
        print(f"classifier calibrated on {calibration}")
    return 0


def measure_judged_evidence(
    args: argparse.Namespace, records: RecordSet, embedder: Embedder, artifacts: RouterArtifacts
) -> None:
    """What the default judges' outcomes are worth, on the held-out split (ROUTER.json)."""
    import asyncio

    from emafusion.graph.context import Context
    from emafusion.nodes.resources import RouterResources
    from emafusion.train.judged_evidence import describe, measure_router

    held_out = records.split(args.calibrate_on)
    pool = pool_for(args, records)
    if not held_out or pool is None:
        return
    resources = RouterResources.create(
        pool, artifacts, embedder, taxonomy_for(args, records), records
    )
    evidence = asyncio.run(measure_router(resources, held_out, Context(), args.calibrate_on))
    artifacts.info["judged"] = evidence.to_json()
    print(describe(evidence))


def cmd_memory_report(args: argparse.Namespace) -> int:
    """Is predicted success informative on held-out queries?"""
    import numpy as np

    from emafusion.stores.artifacts import RouterArtifacts, build_router_artifacts, embed_records
    from emafusion.stores.embeddings import default_embedder
    from emafusion.stores.metrics import auroc

    records = load_records(args)
    embedder = default_embedder()
    if args.router_dir:
        memory = RouterArtifacts.load(args.router_dir, embedder.id).memory
    else:
        memory = build_router_artifacts(
            records, embedder, taxonomy_for(args, records), pool_for(args, records)
        ).memory
    held_out = records.split(args.split)
    models = records.models
    vectors = embed_records(held_out, embedder)
    batch = memory.predict_arrays(vectors, models, k=args.k)
    predicted = batch.p_success
    truth = np.full(predicted.shape, np.nan)
    for i, record in enumerate(held_out):
        for j, model in enumerate(models):
            if model in record.outcomes:
                truth[i, j] = record.outcomes[model].score
    known = ~np.isnan(truth)
    print(
        f"{records.name}: {len(held_out):,} {args.split} queries, memory of {len(memory):,} "
        f"(k={args.k})"
    )
    overall = auroc(predicted[known], truth[known] >= 0.5)
    print(f"AUROC of predicted success for (query, model) correctness: {overall:.4f}")
    print(f"{'model':<36} {'AUROC':>7} {'accuracy':>9}")
    for j, model in enumerate(models):
        mask = known[:, j]
        print(
            f"{model:<36} {auroc(predicted[mask, j], truth[mask, j] >= 0.5):>7.4f} "
            f"{np.nanmean(truth[:, j]):>9.4f}"
        )
    # Pick the highest predicted success among the models that answered the query.
    masked = np.where(known, predicted, -np.inf)
    picks = masked.argmax(axis=1)
    picked_accuracy = float(np.mean(truth[np.arange(len(held_out)), picks]))
    single = {m: float(np.nanmean(truth[:, j])) for j, m in enumerate(models)}
    best = max(single, key=lambda m: single[m])
    print(
        f"pick highest predicted success: accuracy {picked_accuracy:.4f} vs best single model "
        f"{best} {single[best]:.4f} ({picked_accuracy - single[best]:+.4f})"
    )
    return 0


def cmd_memory_compact(args: argparse.Namespace) -> int:
    """Fold the outcome log into a new generation (any process may, at any time)."""
    from emafusion.stores.memory import OutcomeMemory, OutcomeMemoryError

    if args.router_dir:
        memory = OutcomeMemory.load(Path(args.router_dir) / "memory")
    elif args.store_url:
        from emafusion.stores.memory.postgres import PostgresStore, memory_names

        names = memory_names(args.store_url)
        name = args.memory or (names[0] if len(names) == 1 else None)
        if name is None or name not in names:
            raise OutcomeMemoryError(
                f"name the memory to compact with --memory; the database holds "
                f"{', '.join(names) or 'none'}"
            )
        memory = OutcomeMemory.load(PostgresStore(args.store_url, name))
    else:
        raise OutcomeMemoryError("compact needs --router-dir DIR or --store-url URL")
    replayed = memory.log_report.replayed
    generation = memory.compact()
    print(
        f"compacted {memory.location}: {len(memory):,} queries, {replayed:,} log entries "
        f"folded into {generation.name}"
    )
    return 0


def cmd_memory_migrate(args: argparse.Namespace) -> int:
    """Create or upgrade the emafusion tables of a PostgreSQL database."""

    import psycopg

    from emafusion.stores.memory.postgres_schema import (
        StoreUnavailableError,
        migrate,
        redact,
        scrub,
    )

    try:
        conn = psycopg.connect(args.store_url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise StoreUnavailableError(
            f"cannot reach PostgreSQL at {redact(args.store_url)}: "
            f"{scrub(str(exc).strip(), args.store_url)}"
        ) from None
    with conn:
        before, after = migrate(conn)
    was = "no emafusion schema" if before is None else f"schema version {before}"
    print(f"{redact(args.store_url)}: {was} -> schema version {after}")
    return 0


def add_memory_commands(commands: argparse._SubParsersAction) -> None:
    from emafusion.stores.recordings import SPLITS

    memory = commands.add_parser("memory", help="the learned router's outcome memory")
    actions = memory.add_subparsers(dest="memory_command", metavar="ACTION", required=True)

    build = actions.add_parser("build", help="build memory + classifier from recordings")
    add_source_args(build)
    build.add_argument("--split", choices=SPLITS, action="append", help="default: train")
    build.add_argument("--calibrate-on", choices=SPLITS, help="held-out split for calibration")
    build.add_argument("--index", choices=("flat", "hnsw"), default="flat")
    build.add_argument("--taxonomy", type=Path)
    build.add_argument("--out", type=Path, required=True, metavar="DIR")
    build.set_defaults(handler=cmd_memory_build)

    report = actions.add_parser("report", help="AUROC of predicted success on a held-out split")
    add_source_args(report)
    report.add_argument("--split", choices=SPLITS, default="validation")
    report.add_argument("--router-dir", type=Path, help="built artifacts (default: build now)")
    report.add_argument("--taxonomy", type=Path)
    report.add_argument("-k", type=int, default=20)
    report.set_defaults(handler=cmd_memory_report)

    compact = actions.add_parser("compact", help="fold the outcome log into a new generation")
    compact.add_argument("--router-dir", type=Path, metavar="DIR", help="a router directory")
    add_store_url_arg(compact)
    compact.add_argument(
        "--memory",
        help="the memory's name in the database (a deployment's "
        "dataset or recordings name; default: the only one there)",
    )
    compact.set_defaults(handler=cmd_memory_compact)

    migrate = actions.add_parser("migrate", help="create/upgrade the PostgreSQL schema")
    add_store_url_arg(migrate, required=True)
    migrate.set_defaults(handler=cmd_memory_migrate)
