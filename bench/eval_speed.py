"""Benchmark: wall time of the main job, and the graph's own cost against embedding's.

Runs `emafusion eval --dataset mmlu-pro` (a subprocess, warm embedding cache) and times it,
then, on validation queries, compares per query:
  * the baseline: embedding one query with MiniLM (batch 1, no cache) - the unavoidable
    cost of routing by meaning;
  * the router graph's own overhead (node time outside model and judge calls), sequential.

Usage:  .venv/bin/python bench/eval_speed.py [--dataset mmlu-pro] [--skip-eval] [--queries 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from emafusion.graph.context import Context
from emafusion.graph.evaluate import run_graph
from emafusion.nodes.resources import RouterResources
from emafusion.stores.artifacts import build_router_artifacts
from emafusion.stores.embeddings import MiniLMEmbedder, default_embedder
from emafusion.stores.pool import load_default_pool
from emafusion.stores.recordings import embedding_text, load_dataset
from emafusion.stores.taxonomy import default_taxonomy_path, load_taxonomy


def time_eval(dataset: str) -> tuple[float, dict[str, object]]:
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "emafusion.graph.cli",
                "eval",
                "--dataset",
                dataset,
                "--out",
                out,
                "--no-progress",
            ],
            check=True,
            capture_output=True,
        )
        wall = time.perf_counter() - started
        results = json.loads((Path(out) / "results.json").read_text())
    return wall, results


def per_query(dataset: str, n: int) -> tuple[list[float], list[float]]:
    records = load_dataset(dataset)
    queries = records.split("validation")[:n]
    raw = MiniLMEmbedder()
    raw.embed(["warm up"])
    embed_ms = []
    for record in queries:
        started = time.perf_counter()
        raw.embed([embedding_text(record)])
        embed_ms.append((time.perf_counter() - started) * 1000.0)
    embedder = default_embedder()
    pool = load_default_pool(dataset)
    taxonomy = load_taxonomy(default_taxonomy_path(dataset))
    artifacts = build_router_artifacts(records, embedder, taxonomy, pool)
    resources = RouterResources.create(pool, artifacts, embedder, taxonomy, records)
    context = Context(dataset=None, resources=resources, record_outcomes=False)
    results = asyncio.run(run_graph(queries, context, concurrency=1))
    return embed_ms, [r.overhead_ms for r in results]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="mmlu-pro")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--skip-eval", action="store_true")
    args = parser.parse_args()

    rows = []
    if not args.skip_eval:
        wall, results = time_eval(args.dataset)
        rows.append((f"emafusion eval --dataset {args.dataset} (warm cache)", f"{wall:.1f} s", ""))
        rows.append(("  test queries routed per run", str(results["n"]), ""))
    embed_ms, overhead_ms = per_query(args.dataset, args.queries)
    e50, o50 = statistics.median(embed_ms), statistics.median(overhead_ms)
    rows.append(("baseline: MiniLM embed, 1 query (p50)", f"{e50:.2f} ms", "1.00x"))
    rows.append(("  p99", f"{np.percentile(embed_ms, 99):.2f} ms", ""))
    rows.append(("router graph overhead per query (p50)", f"{o50:.2f} ms", f"{o50 / e50:.2f}x"))
    rows.append(("  p99", f"{np.percentile(overhead_ms, 99):.2f} ms", ""))
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'value':>10}  {'vs embed':>8}")
    for name, value, ratio in rows:
        print(f"{name:<{width}}  {value:>10}  {ratio:>8}")


if __name__ == "__main__":
    main()
