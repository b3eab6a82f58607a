"""Benchmark: what the router adds before an answer, with a large memory; how fast it starts.

Per query, on held-out (validation) queries routed one at a time through the real graph with
the evaluated default preset:
  * baseline: one query embedded by sentence-transformers (batch 1, no cache), the
    unavoidable cost of routing by meaning as the project first shipped it;
  * the router's overhead: graph node time outside model and judge calls, the query's
    embedding included (the default embedding path, no embedding cache), with the memory
    padded to ``--stored`` queries (default 100,000).

The padding repeats the train queries with their recorded outcomes at perturbed vectors
(unit length, cosine ~0.9 to the original), so the kNN search and the per-neighbour work
are those of a memory of that size; the evaluated router's accuracy is not the point here.

Start-up: wall time of `emafusion --help` and of one replayed `emafusion ask`, in fresh
processes, against `python -c "import langgraph, langchain_core"` as the baseline.

Run `make eval` (or `emafusion eval --dataset DS`) first: the router directory it writes is
the one benchmarked (else a router is built from train without presets).

Usage:  .venv/bin/python bench/eval_speed.py [--dataset mmlu-pro] [--queries 300]
            [--stored 100000] [--router-dir DIR] [--skip-startup]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from emafusion.graph import Context, make_graph
from emafusion.nodes.resources import DeploymentSettings, RouterResources, load_router
from emafusion.stores.artifacts import default_router_dir
from emafusion.stores.embedding_base import Embedder
from emafusion.stores.embeddings import MiniLMEmbedder, default_embedder
from emafusion.stores.recordings import embedding_text
from emafusion.train.graph_runs import run_graph

PADDING_NOISE = 0.025  # per-dimension, on 384-d unit vectors: cosine to the original ~0.9


def pad_memory(resources: RouterResources, stored: int, seed: int = 0) -> int:
    """Grow the memory to ``stored`` queries; returns how many were added."""
    memory = resources.memory
    originals = memory.records()
    missing = stored - len(originals)
    if missing <= 0:
        return 0
    rng = np.random.default_rng(seed)
    base = np.stack([memory.vector(q.query_id) for q in originals])
    added = 0
    while added < missing:
        take = min(missing - added, 20_000)
        picks = rng.integers(0, len(originals), size=take)
        vectors = base[picks] + rng.normal(0.0, PADDING_NOISE, size=(take, base.shape[1]))
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        memory.add_many(
            [f"pad-{added + i}" for i in range(take)],
            vectors.astype(np.float32),
            [list(originals[p].outcomes.values()) for p in picks],
            [originals[p].category for p in picks],
            category_is_label=True,
        )
        added += take
    return added


def embed_times(texts: list[str], embedder: Embedder | None = None) -> list[float]:
    """Batch-1 embedding time of each text (default: sentence-transformers, the baseline)."""
    raw = embedder or MiniLMEmbedder()
    raw.embed(["warm up"])
    times = []
    for text in texts:
        started = time.perf_counter()
        raw.embed([text])
        times.append((time.perf_counter() - started) * 1000.0)
    return times


def router_overhead(resources: RouterResources, records: list, warmup: int) -> list[float]:
    graph = make_graph(resources)
    context = Context(record_outcomes=False)
    asyncio.run(run_graph(graph, records[:warmup], context, concurrency=1))
    results = asyncio.run(run_graph(graph, records, context, concurrency=1))
    return [r.overhead_ms for r in results]


def wall(command: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="mmlu-pro")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--stored", type=int, default=100_000)
    parser.add_argument("--router-dir", type=Path, help="default: the evaluation's")
    parser.add_argument("--skip-startup", action="store_true")
    args = parser.parse_args()
    router_dir = args.router_dir or default_router_dir(args.dataset)

    settings = DeploymentSettings(dataset=args.dataset, router_dir=router_dir)
    resources = load_router(settings)
    assert resources.records is not None
    queries = list(resources.records.split("validation")[: args.queries])
    preset = "default" if resources.presets and "default" in resources.presets.names() else None

    texts = [embedding_text(r) for r in queries]
    baseline = embed_times(texts)
    stored_before = len(resources.memory.records())
    added = pad_memory(resources, args.stored)
    # Every query embedded afresh: the embedding cache would hide the embedding's cost.
    uncached = dataclasses.replace(resources, embedder=default_embedder(cache=False))
    default_path = embed_times(texts, uncached.embedder)
    overhead = router_overhead(uncached, queries, warmup=min(20, len(queries)))
    # The same queries again with their vectors cached: the graph's own work alone.
    cached = dataclasses.replace(resources, embedder=default_embedder(cache=True))
    embed_times(texts, cached.embedder)
    graph_only = router_overhead(cached, queries, warmup=0)

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; python {platform.python_version()}"
    )
    print(
        f"dataset {args.dataset}: {len(queries)} validation queries, one at a time; memory "
        f"{stored_before} stored + {added} padded = {len(resources.memory.records())}; "
        f"embedder {uncached.embedder.id}; preset {preset or 'none (Context defaults)'}"
    )
    e50 = statistics.median(baseline)
    rows = [
        ("baseline: sentence-transformers embed, 1 query", baseline),
        (
            f"default embedding path ({uncached.embedder.id.rsplit('/', 1)[-1]}), 1 query",
            default_path,
        ),
        ("router overhead per query, embedding included", overhead),
        ("router overhead per query, embedding cached (graph alone)", graph_only),
    ]
    print()
    print("| per query | p50 ms | p99 ms | p50 vs baseline |")
    print("|---|---|---|---|")
    for name, values in rows:
        p50, p99 = statistics.median(values), float(np.percentile(values, 99))
        print(f"| {name} | {p50:.2f} | {p99:.2f} | {p50 / e50:.2f}x |")

    if args.skip_startup:
        return
    exe = Path(sys.executable).with_name("emafusion")
    ask = [str(exe), "ask", "--dataset", args.dataset, "--router-dir", str(router_dir)]
    ask += ["--no-record", "--record-id", queries[0].id]
    base = wall([sys.executable, "-c", "import langgraph.graph, langchain_core"], 3)
    print()
    print("| start-up (fresh process, median of 3) | wall s | vs baseline |")
    print("|---|---|---|")
    for name, seconds in (
        ("baseline: import langgraph + langchain_core", base),
        ("emafusion --help", wall([str(exe), "--help"], 3)),
        ("emafusion ask (replay, one query)", wall(ask, 3)),
    ):
        print(f"| {name} | {seconds:.2f} | {seconds / base:.2f}x |")


if __name__ == "__main__":
    main()
