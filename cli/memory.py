"""`emafusion memory build|report`: the learned router's memory from recordings."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from emafusion.cli.sources import add_source_args, load_records, pool_for, taxonomy_for
from emafusion.stores.artifacts import RouterArtifacts, build_router_artifacts, embed_records
from emafusion.stores.embeddings import default_embedder
from emafusion.stores.memory import MemorySettings
from emafusion.stores.metrics import auroc
from emafusion.stores.recordings import SPLITS


def cmd_memory_build(args: argparse.Namespace) -> int:
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


def cmd_memory_report(args: argparse.Namespace) -> int:
    """Is predicted success informative on held-out queries?"""
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


def add_memory_commands(commands: argparse._SubParsersAction) -> None:
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
