"""Benchmark recording live outcomes into a saved OutcomeMemory: log append vs full save.

For memories of each size (stored queries, 8 models, 384-d synthetic unit vectors), times
recording one outcome at a time, each on a new query (as live traffic does), three ways:

  * baseline ``add + save``: a full new generation after every outcome (what the router did
    with ``--save-memory`` before the outcome log: O(memory) per outcome);
  * ``append``, batch 1: one fsynced log record per outcome;
  * ``append_many``, batch 64: one fsynced write per 64 outcomes.

A record is acknowledged (durable) when its call returns, so its latency is the time of the
call it was in; throughput is outcomes per second of wall time. Every method runs on the
same memory in the same run, against the same disk (``--dir``, default a temporary
directory), and the table gives throughput as a ratio to the baseline of that size.

Usage:  .venv/bin/python bench/record.py [--sizes 10000,100000] [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import faiss
import numpy as np

from emafusion.stores.memory import MemorySettings, OutcomeMemory, OutcomeRecord

DIM = 384
MODELS = [f"model-{j}" for j in range(8)]


def unit_vectors(n: int, seed: int) -> np.ndarray:
    out = np.random.default_rng(seed).standard_normal((n, DIM), dtype=np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def build(size: int, directory: Path, seed: int) -> OutcomeMemory:
    rng = np.random.default_rng(seed)
    memory = OutcomeMemory(DIM, "bench-embedder", MemorySettings())
    scores = rng.random((size, len(MODELS)))
    outcomes = [
        [
            OutcomeRecord(model=m, score=float(scores[i, j]), source="recording", timestamp=1e9)
            for j, m in enumerate(MODELS)
        ]
        for i in range(size)
    ]
    memory.add_many([f"q{i}" for i in range(size)], unit_vectors(size, seed), outcomes)
    memory.save(directory)
    return memory


def live(i: int) -> list[OutcomeRecord]:
    return [OutcomeRecord(model=MODELS[i % 8], score=0.5, source="live_judged", cost_usd=1e-4)]


def timed(calls: int, per_call: int, fn: Callable[[int], object]) -> tuple[float, list[float]]:
    """(outcomes per second, seconds of each call)."""
    latencies = []
    start = time.perf_counter()
    for i in range(calls):
        begin = time.perf_counter()
        fn(i)
        latencies.append(time.perf_counter() - begin)
    return calls * per_call / (time.perf_counter() - start), latencies


def bench_size(size: int, root: Path, args: argparse.Namespace) -> list[list[str]]:
    directory = root / f"memory-{size}"
    started = time.perf_counter()
    memory = build(size, directory, args.seed)
    print(f"  {size:,}: built and saved in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    vectors = unit_vectors(args.saves + args.appends + args.batches * 64, args.seed + 1)
    cursor = 0

    def next_vectors(n: int) -> np.ndarray:
        nonlocal cursor
        cursor += n
        return vectors[cursor - n : cursor]

    def add_and_save(i: int) -> None:
        memory.add(f"save{i}", next_vectors(1)[0], live(i))
        memory.save(directory)

    def append_one(i: int) -> None:
        memory.append(f"one{i}", next_vectors(1)[0], live(i))

    def append_batch(i: int) -> None:
        ids = [f"batch{i}-{j}" for j in range(64)]
        memory.append_many(ids, next_vectors(64), [live(j) for j in range(64)])

    results = {
        "add + save (baseline)": (1, timed(args.saves, 1, add_and_save)),
        "append, batch 1": (1, timed(args.appends, 1, append_one)),
        "append_many, batch 64": (64, timed(args.batches, 64, append_batch)),
    }
    started = time.perf_counter()
    memory.compact()
    compact_s = time.perf_counter() - started
    reloaded = OutcomeMemory.load(directory)
    expected = size + args.saves + args.appends + 64 * args.batches
    assert len(reloaded) == expected, (len(reloaded), expected)  # nothing lost on the way
    shutil.rmtree(directory)

    baseline = results["add + save (baseline)"][1][0]
    rows = []
    for name, (batch, (rate, latencies)) in results.items():
        rows.append(
            [
                f"{size:,}",
                name,
                f"{len(latencies) * batch:,}",
                f"{rate:,.1f}",
                f"{statistics.median(latencies) * 1e3:.2f}",
                f"{float(np.percentile(latencies, 99)) * 1e3:.2f}",
                f"{rate / baseline:,.0f}x" if name != "add + save (baseline)" else "1x",
            ]
        )
    rows.append(
        [f"{size:,}", "compact() afterwards (once)", "", "", f"{compact_s * 1e3:.0f}", "", ""]
    )
    return rows


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[10_000, 100_000],
        help="stored queries, comma separated (default 10k,100k)",
    )
    parser.add_argument("--saves", type=int, default=10, help="timed add + save calls per size")
    parser.add_argument("--appends", type=int, default=1000, help="timed batch-1 appends")
    parser.add_argument("--batches", type=int, default=100, help="timed batch-64 appends")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: tmp)")
    parser.add_argument("--quick", action="store_true", help="sizes 2k,10k, fewer calls")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes = [2_000, 10_000] if "--sizes" not in (argv or sys.argv) else args.sizes
        args.saves, args.appends, args.batches = 3, 50, 5
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    faiss.omp_set_num_threads(1)  # one query at a time: threads cost more than they give
    root = Path(tempfile.mkdtemp(prefix="emafusion-record-bench-", dir=args.dir))
    print(
        f"emafusion recording benchmark: python {platform.python_version()}, faiss "
        f"{faiss.__version__}, {os.cpu_count()} CPUs, dim={DIM}, {len(MODELS)} models, "
        f"writing under {root}"
    )
    started = time.perf_counter()
    try:
        rows = [row for size in args.sizes for row in bench_size(size, root, args)]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    header = [
        "stored queries",
        "recording",
        "outcomes",
        "outcomes/s",
        "p50 ms to ack",
        "p99 ms to ack",
        "throughput vs add + save",
    ]
    print()
    print(markdown(header, rows))
    print(f"\ntotal wall time {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
