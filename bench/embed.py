"""Benchmark: MiniLM embedding paths against sentence-transformers, each in a fresh process.

Per path (sentence-transformers = the baseline, ONNX fp32, ONNX int8, the static table
distilled from the same weights), in its own subprocess so that RSS and start-up are that
path's alone:
  * start-up: import the package + build the embedder + embed the first query (the ONNX files
    and the static table are built beforehand, once; their one-off build times are printed
    separately);
  * batch-1 latency, p50 and p99, over real routing texts (validation queries);
  * batch-256 throughput (texts per second), over the same kind of texts;
  * peak RSS of the process.
No embedding cache is involved. Prints a markdown table with each path's ratio to the
baseline (for latency and RSS lower is better; for throughput higher is better).

Usage:  .venv/bin/python bench/embed.py [--dataset mmlu-pro] [--queries 200] [--batches 4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PATHS = ("sentence-transformers", "onnx", "onnx-int8", "static")


def worker(kind: str, texts_file: Path, cache_dir: Path, queries: int, batches: int) -> None:
    """Runs in the measured subprocess; prints one JSON line."""
    started = time.perf_counter()
    from emafusion.stores.embeddings import make_embedder

    texts: list[str] = json.loads(texts_file.read_text())
    embedder = make_embedder(kind, cache_dir=cache_dir)
    embedder.embed(texts[:1])
    startup_s = time.perf_counter() - started

    for text in texts[1:6]:  # warm-up
        embedder.embed([text])
    latencies, cpu = [], []
    for text in texts[:queries]:
        t0, c0 = time.perf_counter(), time.process_time()
        embedder.embed([text])
        latencies.append((time.perf_counter() - t0) * 1000.0)
        cpu.append((time.process_time() - c0) * 1000.0)
    batch_s = []
    for b in range(batches):
        batch = [texts[(b * 256 + i) % len(texts)] for i in range(256)]
        t0 = time.perf_counter()
        embedder.embed(batch)
        batch_s.append(time.perf_counter() - t0)

    import numpy as np

    heavy = sorted({"torch", "sentence_transformers", "onnxruntime"} & set(sys.modules))
    print(
        json.dumps(
            {
                "kind": kind,
                "id": embedder.id,
                "startup_s": startup_s,
                "p50_ms": float(np.percentile(latencies, 50)),
                "p99_ms": float(np.percentile(latencies, 99)),
                "cpu_ms": float(np.percentile(cpu, 50)),
                "throughput": 256 / min(batch_s),
                "rss_mb": peak_rss_mb(),
                "loaded": heavy,
            }
        )
    )


def peak_rss_mb() -> float:
    """This process's peak RSS. Not getrusage: Linux carries ru_maxrss over exec, so a child
    would report its parent's peak (the parent holds the loaded dataset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def routing_texts(dataset: str, n: int) -> list[str]:
    from emafusion.stores.recordings import embedding_text, load_dataset

    records = load_dataset(dataset).split("validation")
    return [embedding_text(r) for r in records[:n]]


def measure(kind: str, texts_file: Path, cache_dir: Path, queries: int, batches: int) -> dict:
    command = [sys.executable, __file__, "--worker", kind, "--texts", str(texts_file)]
    command += ["--cache-dir", str(cache_dir), "--queries", str(queries)]
    command += ["--batches", str(batches)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="mmlu-pro")
    parser.add_argument("--queries", type=int, default=200, help="batch-1 samples per path")
    parser.add_argument("--batches", type=int, default=4, help="batch-256 runs (best counts)")
    parser.add_argument("--cache-dir", type=Path, help="where the ONNX files and table are kept")
    parser.add_argument("--worker", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--texts", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # before any import of the package: start-up is measured in there
        worker(args.worker, args.texts, args.cache_dir, args.queries, args.batches)
        return

    from emafusion.stores.embedding_base import default_cache_dir

    cache_dir = args.cache_dir or default_cache_dir()

    from emafusion.stores.onnx_embedder import OnnxMiniLMEmbedder
    from emafusion.stores.onnx_export import manifest_path
    from emafusion.stores.static_embedder import StaticMiniLMEmbedder

    builds = {}
    for variant in ("fp32", "int8"):
        embedder = OnnxMiniLMEmbedder(variant, cache_dir=cache_dir)
        path = embedder.prepare()  # export once, outside the timings
        builds[f"ONNX {variant}"] = json.loads(manifest_path(path).read_text())
    table = StaticMiniLMEmbedder(cache_dir=cache_dir).prepare()  # distil once, likewise
    builds["static table"] = json.loads(manifest_path(table).read_text())
    texts = routing_texts(args.dataset, max(args.queries, 256))
    load_before = _load()
    with tempfile.TemporaryDirectory() as tmp:
        texts_file = Path(tmp) / "texts.json"
        texts_file.write_text(json.dumps(texts))
        rows = [measure(k, texts_file, cache_dir, args.queries, args.batches) for k in PATHS]

    base = rows[0]
    print(
        f"{args.dataset} validation texts: {args.queries} batch-1 queries, "
        f"batch-256 best of {args.batches}; each path in a fresh process\n"
    )
    print(
        "| path | start-up s | batch-1 p50 ms | batch-1 p99 ms | batch-1 CPU ms p50 "
        "| batch-256 texts/s | peak RSS MB | loads |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:

        def cell(key: str, fmt: str, row: dict = row) -> str:
            ratio = row[key] / base[key]
            return f"{row[key]:{fmt}} ({ratio:.2f}x)"

        print(
            f"| {row['kind']} | {cell('startup_s', '.2f')} | {cell('p50_ms', '.2f')} "
            f"| {cell('p99_ms', '.2f')} | {cell('cpu_ms', '.2f')} | {cell('throughput', '.0f')} "
            f"| {cell('rss_mb', '.0f')} "
            f"| {', '.join(row['loaded'])} |"
        )
    print(
        "\nratios: to sentence-transformers in the same run. CPU ms: process CPU time (all "
        "threads) per query, less sensitive than wall time to other load on the machine."
    )
    print(f"load average before/after: {load_before} / {_load()}")
    for name, build in builds.items():
        size_mb = build["size"] / 2**20
        print(f"{name}: {size_mb:.0f} MB file, one-off build {build['build_seconds']} s")


if __name__ == "__main__":
    main()
