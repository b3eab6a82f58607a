"""Benchmark the learned router's building blocks on CPU.

Measures
  * MiniLM embedding time: one query (batch 1) and a batch of 256;
  * kNN search latency (one query per call, p50/p99) at each size, exact ``IndexFlatIP``
    versus HNSW at several ``efSearch`` values, with HNSW recall@k against the exact result
    of the same run, plus build time, serialized index bytes and process RSS growth;
  * `OutcomeMemory`: time to add one record, to update a stored query, and to predict;
  * prediction when half the stored queries hold only judged outcomes (a router recording
    its own traffic): the search widens until it has k rows with ground truth, against the
    previous rule (fetch k plus every judged-only row) as a raw FAISS search in the same run.

Vectors are synthetic 384-d, unit length, float32, from a fixed seed. By default they are
clustered (queries come in topics, like real embeddings: a point's cosine to its cluster
centre is about 0.7); ``--data uniform`` gives i.i.d. Gaussian directions, the worst case for
HNSW recall. Queries are held out from the stored vectors.

Usage:  .venv/bin/python bench/memory.py [--quick] [--sizes 10000,100000,1000000]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from emafusion.stores.memory import MemorySettings, OutcomeMemory, OutcomeRecord

DIM = 384
CLUSTERS = 1000
NOISE = 1.0  # per-dimension noise around unit-variance centres: cosine to centre ~0.7
CHUNK = 100_000


# ------------------------------------------------------------------------------ helpers


def rss_bytes() -> int:
    """Resident set size of this process, from /proc (Linux) or getrusage peak elsewhere."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def time_calls(fn: Callable[[int], object], n: int) -> list[float]:
    """Seconds per call of fn(i) for i in range(n)."""
    out = []
    for i in range(n):
        start = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - start)
    return out


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}" if seconds < 0.01 else f"{seconds * 1e3:.1f}"


def mb(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:,.1f}"


def align(cell: str, width: int) -> str:
    """Numbers right, text left."""
    numeric = cell[:1].isdigit() or cell[:1] == "-" and cell[1:2].isdigit()
    return cell.rjust(width) if numeric else cell.ljust(width)


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    line = "+".join("-" * (w + 2) for w in widths)
    print(f"\n{title}")
    print(f"+{line}+")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print(f"+{line}+")
    for row in rows:
        cells = [align(str(c), w) for c, w in zip(row, widths, strict=True)]
        print("| " + " | ".join(cells) + " |")
    print(f"+{line}+", flush=True)


# ------------------------------------------------------------------------------ data


class Data:
    """Deterministic synthetic unit vectors (clustered or uniform directions)."""

    def __init__(self, kind: str, seed: int) -> None:
        self.kind = kind
        self.seed = seed
        self.centres = np.random.default_rng(seed).standard_normal((CLUSTERS, DIM), np.float32)

    def draw(self, n: int, stream: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, stream])
        out = np.empty((n, DIM), dtype=np.float32)
        for start in range(0, n, CHUNK):
            stop = min(n, start + CHUNK)
            block = rng.standard_normal((stop - start, DIM), np.float32)
            if self.kind == "clustered":
                block *= NOISE
                block += self.centres[rng.integers(0, CLUSTERS, stop - start)]
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            out[start:stop] = block
        return out


# ------------------------------------------------------------------------------ embedding


def bench_embedding(repeats_single: int, repeats_batch: int) -> list[list[str]]:
    from emafusion.stores.embeddings import MiniLMEmbedder

    words = [
        "how", "do", "I", "route", "a", "prompt", "to", "the", "cheapest", "model", "that",
        "answers", "python", "sorting", "integrals", "French", "contract", "law", "tax",
    ]  # fmt: skip
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, size=int(rng.integers(8, 40)))) for _ in range(512)]
    embedder = MiniLMEmbedder(batch_size=64)
    start = time.perf_counter()
    embedder.embed(["warm up"])
    load_s = time.perf_counter() - start
    single = time_calls(lambda i: embedder.embed([texts[i % len(texts)]]), repeats_single)
    batch = time_calls(
        lambda i: embedder.embed(texts[(i % 2) * 256 : (i % 2) * 256 + 256]), repeats_batch
    )
    rows = [
        ["load model + first call", "1", ms(load_s), "", ""],
        ["embed 1 query", "1", ms(statistics.median(single)),
         ms(percentile(single, 99)), f"{1 / statistics.median(single):,.0f}"],
        ["embed 256 queries", "256", ms(statistics.median(batch)),
         ms(max(batch)), f"{256 / statistics.median(batch):,.0f}"],
    ]  # fmt: skip
    return rows


# ------------------------------------------------------------------------------ kNN


@dataclass
class IndexResult:
    size: int
    name: str
    params: str
    build_s: float
    latencies: list[float]
    index_bytes: int
    rss_delta: int
    recall: float | None = None  # None: this is the exact baseline
    sim_ratio: float | None = None

    def row(self) -> list[str]:
        recall = "1 (exact)" if self.recall is None else f"{self.recall:.3f}"
        sim_ratio = "1" if self.sim_ratio is None else f"{self.sim_ratio:.4f}"
        p50, p99 = percentile(self.latencies, 50), percentile(self.latencies, 99)
        return [
            f"{self.size:,}", self.name, self.params, f"{self.build_s:.1f}", ms(p50), ms(p99),
            recall, sim_ratio, mb(self.index_bytes), mb(self.rss_delta),
        ]  # fmt: skip


def release_freed_memory() -> None:
    """Free Python garbage and hand freed heap back to the OS so RSS deltas are per index."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def build(make: Callable[[], Any], data: np.ndarray) -> tuple[Any, float, int]:
    release_freed_memory()
    before = rss_bytes()
    start = time.perf_counter()
    index = make()
    index.add(data)
    elapsed = time.perf_counter() - start
    release_freed_memory()
    return index, elapsed, rss_bytes() - before


def serialized_size(index: faiss.Index) -> int:
    blob = faiss.serialize_index(index)
    size = int(blob.nbytes)
    del blob
    return size


def single_query_latencies(index: faiss.Index, queries: np.ndarray, k: int) -> list[float]:
    return time_calls(lambda i: index.search(queries[i : i + 1], k), len(queries))


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True))
    return hits / (k * len(truth))


def bench_size(size: int, data_source: Data, args: argparse.Namespace) -> list[IndexResult]:
    data = data_source.draw(size, stream=1)
    queries = data_source.draw(args.queries, stream=2)
    k = args.k
    results = []

    flat, build_s, rss = build(lambda: faiss.IndexFlatIP(DIM), data)
    latencies = single_query_latencies(flat, queries, k)
    truth_sims, truth = flat.search(queries, k)
    results.append(
        IndexResult(size, "exact FlatIP", "-", build_s, latencies, serialized_size(flat), rss)
    )
    print(f"  {size:,}: exact done ({build_s:.1f}s build)", file=sys.stderr, flush=True)
    del flat
    gc.collect()

    def make_hnsw() -> Any:
        index = faiss.IndexHNSWFlat(DIM, args.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = args.ef_construction
        return index

    hnsw, build_s, rss = build(make_hnsw, data)
    del data
    hnsw_bytes = serialized_size(hnsw)
    for ef in args.ef_search:
        hnsw.hnsw.efSearch = max(ef, k)
        latencies = single_query_latencies(hnsw, queries, k)
        found_sims, found = hnsw.search(queries, k)
        params = f"M={args.hnsw_m} efC={args.ef_construction} efS={ef}"
        result = IndexResult(size, "HNSWFlat", params, build_s, latencies, hnsw_bytes, rss)
        result.recall = recall_at_k(found, truth)
        # Missed neighbours that are near-ties barely move a kNN estimate; this shows how
        # close the found similarities are to the exact ones.
        result.sim_ratio = float(found_sims.sum() / truth_sims.sum())
        results.append(result)
    print(f"  {size:,}: hnsw done ({build_s:.1f}s build)", file=sys.stderr, flush=True)
    del hnsw
    gc.collect()
    return results


# ------------------------------------------------------------------------------ OutcomeMemory


def bench_outcome_memory(size: int, data_source: Data, args: argparse.Namespace) -> list[list[str]]:
    models = [f"model-{j}" for j in range(8)]
    vectors = data_source.draw(size + args.adds, stream=3)
    rng = np.random.default_rng(args.seed)
    rows = []
    for kind in ("flat", "hnsw"):
        settings = MemorySettings(
            index_kind=kind, k=args.k, hnsw_m=args.hnsw_m,
            hnsw_ef_construction=args.ef_construction, hnsw_ef_search=64,
        )  # fmt: skip
        memory = OutcomeMemory(DIM, "bench-embedder", settings)
        outcomes = [
            [OutcomeRecord(model=m, score=float(rng.random()), source="recording",
                           cost_usd=1e-4 * (j + 1), timestamp=1e9) for j, m in enumerate(models)]
            for _ in range(size)
        ]  # fmt: skip
        start = time.perf_counter()
        memory.add_many([f"q{i}" for i in range(size)], vectors[:size], outcomes)
        bulk_s = time.perf_counter() - start

        def add_new(i: int, memory: OutcomeMemory = memory) -> None:
            record = OutcomeRecord(model="model-0", score=1.0, source="live_judged")
            memory.add(f"new{i}", vectors[size + i], [record])

        def add_existing(i: int, memory: OutcomeMemory = memory) -> None:
            record = OutcomeRecord(model="model-9", score=0.5, source="user_feedback")
            memory.add(f"q{i}", None, [record])

        def predict(i: int, memory: OutcomeMemory = memory) -> None:
            memory.predict(vectors[size + i], models)

        def add_then_predict(i: int, memory: OutcomeMemory = memory) -> None:
            record = OutcomeRecord(model="model-1", score=0.0, source="live_judged")
            memory.add(f"q{i}", None, [record])
            memory.predict(vectors[size + i], models)

        new = time_calls(add_new, args.adds)
        existing = time_calls(add_existing, args.adds)
        memory.predict(vectors[0], models)  # settle the lazily recomputed statistics
        predicted = time_calls(predict, args.adds)
        mixed = time_calls(add_then_predict, args.adds)
        label = f"{kind} @ {size:,}"
        for what, values in (
            ("add one new query (1 outcome)", new),
            ("add outcome to stored query", existing),
            (f"predict {len(models)} models, k={args.k}", predicted),
            ("add + predict (router loop)", mixed),
        ):
            rows.append([label, what, ms(percentile(values, 50)), ms(percentile(values, 99))])
        rows.append([label, f"add_many bulk build ({size:,})", ms(bulk_s), ""])
        del memory
        gc.collect()
    return rows


def bench_judged_rows(size: int, data_source: Data, args: argparse.Namespace) -> list[list[str]]:
    """Half of `size` stored queries with ground truth, half judged only (flat index)."""
    models = [f"model-{j}" for j in range(8)]
    half = size // 2
    vectors = data_source.draw(size + args.adds, stream=4)
    rng = np.random.default_rng(args.seed)
    rows = []
    for weight in (0.0, 0.3):
        settings = MemorySettings(k=args.k, judged_weight=weight)
        memory = OutcomeMemory(DIM, "bench-embedder", settings)
        truth = [
            [OutcomeRecord(model=m, score=float(rng.random()), source="recording", timestamp=1e9)
             for m in models]
            for _ in range(half)
        ]  # fmt: skip
        judged = [
            [OutcomeRecord(model=models[i % 8], score=1.0, source="live_judged", timestamp=1e9)]
            for i in range(size - half)
        ]  # fmt: skip
        ids = [f"q{i}" for i in range(size)]
        memory.add_many(ids, vectors[:size], truth + judged)
        memory.predict(vectors[size], models)  # settle the lazily recomputed statistics

        def predict(i: int, memory: OutcomeMemory = memory) -> None:
            memory.predict(vectors[size + i], models)

        rows.append(
            [f"flat @ {size:,}, half judged-only", f"predict, judged weight {weight}"]
            + [ms(percentile(v, q)) for v in [time_calls(predict, args.adds)] for q in (50, 99)]
        )
    index = faiss.IndexFlatIP(DIM)
    index.add(vectors[:size])

    def fetch_all(i: int) -> None:
        index.search(vectors[size + i : size + i + 1], args.k + size - half)

    values = time_calls(fetch_all, args.adds)
    rows.append(
        [f"flat @ {size:,}, half judged-only", "baseline: search k + every judged-only row"]
        + [ms(percentile(values, 50)), ms(percentile(values, 99))]
    )
    return rows


# ------------------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[10_000, 100_000, 1_000_000],
        help="stored vector counts, comma separated (default 10k,100k,1M)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small run: sizes 2k,10k, fewer queries and repeats"
    )
    parser.add_argument("--queries", type=int, default=200, help="timed single-query searches")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--hnsw-m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=40)
    parser.add_argument(
        "--ef-search", type=lambda s: [int(x) for x in s.split(",")], default=[16, 64, 256]
    )
    parser.add_argument("--data", choices=["clustered", "uniform"], default="clustered")
    parser.add_argument(
        "--memory-size",
        type=int,
        default=10_000,
        help="stored queries for the OutcomeMemory timings",
    )
    parser.add_argument("--adds", type=int, default=200, help="timed OutcomeMemory calls")
    parser.add_argument(
        "--judged-size",
        type=int,
        default=200_000,
        help="stored queries (half judged only) for the judged-rows timings",
    )
    parser.add_argument("--no-embed", action="store_true", help="skip the MiniLM timings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="FAISS and torch threads (default: their own, all cores)",
    )
    args = parser.parse_args(argv)  # fmt: skip
    if args.quick:
        args.sizes = [2_000, 10_000] if "--sizes" not in (argv or sys.argv) else args.sizes
        args.queries = min(args.queries, 50)
        args.memory_size = min(args.memory_size, 2_000)
        args.adds = min(args.adds, 50)
        args.judged_size = min(args.judged_size, 20_000)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        faiss.omp_set_num_threads(args.threads)
        if not args.no_embed:
            import torch

            torch.set_num_threads(args.threads)
    print(
        f"emafusion memory benchmark: python {platform.python_version()}, faiss "
        f"{faiss.__version__}, numpy {np.__version__}, {os.cpu_count()} CPUs "
        f"(faiss OpenMP threads {faiss.omp_get_max_threads()}), data={args.data}, "
        f"dim={DIM}, k={args.k}, seed={args.seed}, {args.queries} timed queries per index"
    )
    started = time.perf_counter()
    if not args.no_embed:
        quick = args.quick
        rows = bench_embedding(repeats_single=20 if quick else 50, repeats_batch=2 if quick else 5)
        print_table("MiniLM embedding (CPU)",
                    ["call", "batch", "median ms", "p99/max ms", "queries/s"], rows)  # fmt: skip

    data_source = Data(args.data, args.seed)
    results: list[IndexResult] = []
    for size in args.sizes:
        results += bench_size(size, data_source, args)
    print_table(
        "kNN search, one query per call (recall@k vs exact in the same run)",
        ["stored", "index", "params", "build s", "p50 ms", "p99 ms", f"recall@{args.k}",
         "sim ratio", "index MB", "RSS delta MB"],
        [r.row() for r in results],
    )  # fmt: skip

    rows = bench_outcome_memory(args.memory_size, data_source, args)
    print_table("OutcomeMemory (8 models, one outcome per call)",
                ["memory", "operation", "p50 ms", "p99 ms"], rows)  # fmt: skip
    rows = bench_judged_rows(args.judged_size, data_source, args)
    print_table("Prediction over judged-only rows (8 models)",
                ["memory", "operation", "p50 ms", "p99 ms"], rows)  # fmt: skip
    print(f"\ntotal wall time {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
