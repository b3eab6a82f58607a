"""Benchmark: does the router learn as well on each embedding path as on sentence-transformers?

For each dataset and each path (sentence-transformers = the baseline, ONNX fp32, ONNX int8,
static: the token table distilled from the same weights), builds the outcome memory and the
category classifier on train exactly as `emafusion memory build` does
(`build_router_artifacts`), then on validation reports
  * the AUROC of predicted success for (query, model) correctness, as `emafusion memory
    report` computes it (k=20, every recorded (query, model) pair);
  * the category classifier's accuracy (most probable category == the recorded one);
with each path's difference to sentence-transformers. The target is |difference| <= 0.005.

Vectors go to a dedicated embedding cache (default .cache/embed-quality, git-ignored), so a
rerun only recomputes the tables; the first run embeds ~12k MMLU-Pro texts per path (minutes).

Usage:  .venv/bin/python bench/embed_quality.py [--dataset routerbench] [--path static]
        [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from emafusion.cli.sources import pool_for, taxonomy_for
from emafusion.stores.artifacts import build_router_artifacts, embed_records
from emafusion.stores.embeddings import CachedEmbedder, EmbedderKind, make_embedder
from emafusion.stores.metrics import auroc
from emafusion.stores.recordings import load_dataset

PATHS: tuple[EmbedderKind, ...] = ("sentence-transformers", "onnx", "onnx-int8", "static")
DATASETS = ("routerbench", "mmlu-pro")
TARGET = 0.005


def evaluate(dataset: str, kind: EmbedderKind, cache_dir: Path, k: int) -> dict[str, float]:
    records = load_dataset(dataset)
    names = argparse.Namespace(dataset=dataset, taxonomy=None, pool=None)
    embedder = CachedEmbedder(make_embedder(kind, cache_dir=cache_dir), cache_dir=cache_dir)
    started = time.perf_counter()
    artifacts = build_router_artifacts(
        records, embedder, taxonomy_for(names, records), pool_for(names, records)
    )
    held_out = records.split("validation")
    vectors = embed_records(held_out, embedder)
    seconds = time.perf_counter() - started

    models = records.models
    predicted = artifacts.memory.predict_arrays(vectors, models, k=k).p_success
    truth = np.full(predicted.shape, np.nan)
    for i, record in enumerate(held_out):
        for j, model in enumerate(models):
            if model in record.outcomes:
                truth[i, j] = record.outcomes[model].score
    known = ~np.isnan(truth)
    classifier = artifacts.classifier
    guessed = classifier.predict_proba(vectors).argmax(axis=1)
    actual = np.array([classifier.categories.index(r.category) for r in held_out])
    return {
        "auroc": auroc(predicted[known], truth[known] >= 0.5),
        "classifier": float(np.mean(guessed == actual)),
        "queries": float(len(held_out)),
        "seconds": seconds,
        "misses": float(embedder.misses),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", choices=DATASETS, action="append", help="default: both")
    parser.add_argument("--path", choices=PATHS[1:], action="append", help="default: all")
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache/embed-quality"))
    parser.add_argument("-k", type=int, default=20)
    args = parser.parse_args()
    paths: tuple[EmbedderKind, ...] = ("sentence-transformers", *(args.path or PATHS[1:]))

    print(
        "| dataset | path | AUROC of predicted success | diff | classifier accuracy | diff "
        "| within 0.005 | embed+build s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for dataset in args.dataset or DATASETS:
        base: dict[str, float] | None = None
        for kind in paths:
            row = evaluate(dataset, kind, args.cache_dir, args.k)
            base = base or row
            d_auroc, d_cls = row["auroc"] - base["auroc"], row["classifier"] - base["classifier"]
            ok = "yes" if abs(d_auroc) <= TARGET and abs(d_cls) <= TARGET else "NO"
            print(
                f"| {dataset} ({row['queries']:.0f} val) | {kind} | {row['auroc']:.4f} "
                f"| {d_auroc:+.4f} | {row['classifier']:.4f} | {d_cls:+.4f} "
                f"| {ok if kind != paths[0] else 'baseline'} "
                f"| {row['seconds']:.0f} ({row['misses']:.0f} embedded) |",
                flush=True,
            )


if __name__ == "__main__":
    main()
