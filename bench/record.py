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

A second table is what a caller of the graph sees: the latency of ``graph.ainvoke`` with
recording on, over the synthetic router of the unit tests (replay models, hash embedder:
the router's own time, no model latency), with ``record`` writing inline (as before: the
call returns after the memory write and, persisted, the fsynced appends) vs handing the
write to the background writer. Each call starts with the writer idle (a client reads its
answer before its next query; ``flush_records`` runs between calls, untimed); the
back-to-back rate (no pause: each run waits at its start for the writes before it) is
given too. Ratio: inline p50 / background p50.

Usage:  .venv/bin/python bench/record.py [--sizes 10000,100000] [--quick] [--ainvoke-calls 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tables import markdown  # bench/tables.py: the scripts run from bench/

from emafusion.graph import Context, make_graph  # noqa: E402
from emafusion.stores.memory import MemorySettings, OutcomeMemory, OutcomeRecord  # noqa: E402
from emafusion.stores.record_writer import RecordWriter  # noqa: E402
from emafusion.stores.run_ledger import RunLedger  # noqa: E402
from tests import synthetic  # noqa: E402

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


MODES = ("inline", "background")
STORES = {
    "in memory": (False, 0.0),
    "fsynced log + ledger": (True, 0.0),
    # A store a network away (a shared database): each memory write takes 5 ms more.
    "in memory + 5 ms simulated store": (False, 0.005),
}


def _resources(mode: str, persist: bool, delay_s: float, root: Path) -> Any:
    records = synthetic.make_records()
    router_dir = root / f"router-{mode}-{'disk' if persist else 'mem'}-{delay_s}"
    resources = synthetic.make_resources(records, router_dir=router_dir)
    resources.writer = RecordWriter(background=mode == "background")
    if persist:
        resources.persist_outcomes = True
        resources.runs = RunLedger(router_dir)
        resources.memory.save(router_dir / "memory")
    if delay_s:
        memory, add = resources.memory, resources.memory.add

        def slow_add(*args: Any, **kwargs: Any) -> Any:
            time.sleep(delay_s)
            return add(*args, **kwargs)

        memory.add = slow_add
    return resources, [r.query for r in records.records if r.split != "train"]


async def _ainvoke_latencies(
    persist: bool, delay_s: float, root: Path, calls: int
) -> dict[str, tuple[list[float], float]]:
    """Per mode: (seconds of each ainvoke, the writer idle at its start; back-to-back runs
    per second). The modes' calls alternate, so a busy machine slows both alike."""
    context = Context(record_outcomes=True)
    setups = {mode: _resources(mode, persist, delay_s, root) for mode in MODES}
    graphs = {mode: make_graph(resources) for mode, (resources, _) in setups.items()}

    async def ask(mode: str, i: int) -> None:
        # By text: replay answers it, and record writes a live query (new, then updated).
        queries = setups[mode][1]
        result = await graphs[mode].ainvoke({"query": queries[i % len(queries)]}, context=context)
        assert result["answer"], result

    latencies: dict[str, list[float]] = {mode: [] for mode in MODES}
    for i in range(5 + calls):  # 5 warm-up calls: caches built, the first save done
        for mode in MODES:
            begin = time.perf_counter()
            await ask(mode, i)
            if i >= 5:
                latencies[mode].append(time.perf_counter() - begin)
            setups[mode][0].flush_records()  # untimed: the writer idle for the next call
    # Back to back, in alternating blocks of 10 calls per mode.
    spent = dict.fromkeys(MODES, 0.0)
    for block in range(0, calls, 10):
        for mode in MODES:
            begin = time.perf_counter()
            for i in range(block, min(block + 10, calls)):
                await ask(mode, calls + i)
            setups[mode][0].flush_records()
            spent[mode] += time.perf_counter() - begin
    for mode in MODES:
        assert setups[mode][0].writer.failed == 0
    return {mode: (latencies[mode], calls / spent[mode]) for mode in MODES}


def bench_ainvoke(root: Path, calls: int) -> list[list[str]]:
    rows = []
    for where, (persist, delay_s) in STORES.items():
        results = asyncio.run(_ainvoke_latencies(persist, delay_s, root, calls))
        inline_p50 = statistics.median(results["inline"][0])
        for mode, (latencies, rate) in results.items():
            p50 = statistics.median(latencies)
            rows.append(
                [
                    where,
                    mode,
                    f"{calls:,}",
                    f"{p50 * 1e3:.2f}",
                    f"{float(np.percentile(latencies, 99)) * 1e3:.2f}",
                    f"{rate:,.0f}",
                    f"{inline_p50 / p50:.2f}x",
                ]
            )
    return rows


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
    parser.add_argument(
        "--ainvoke-calls", type=int, default=200, help="timed ainvoke calls per mode (0: skip)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes = [2_000, 10_000] if "--sizes" not in (argv or sys.argv) else args.sizes
        args.saves, args.appends, args.batches = 3, 50, 5
        args.ainvoke_calls = min(args.ainvoke_calls, 50)
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
        ainvoke_rows = bench_ainvoke(root, args.ainvoke_calls) if args.ainvoke_calls else []
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
    if ainvoke_rows:
        print(
            "\ngraph.ainvoke with recording on, synthetic router (replay models), as the "
            "caller sees it:\n"
        )
        ainvoke_header = [
            "memory",
            "record writes",
            "calls",
            "p50 ms (writer idle)",
            "p99 ms (writer idle)",
            "back-to-back runs/s",
            "p50 inline / p50 this",
        ]
        print(markdown(ainvoke_header, ainvoke_rows))
    print(f"\ntotal wall time {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
