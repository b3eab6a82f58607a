"""Benchmark the shared PostgreSQL outcome store against the local-files store, in one run.

Measures, for each store (the local-files store on --dir is the named baseline):

  * appends: outcomes acknowledged per second, one call per outcome (batch 1) and 64 per
    call (batch 64); each call is durable when it returns (fsync / commit);
  * replication lag: a second replica in another process follows the memory
    (`OutcomeMemory.follow`, the deployment's 1 s interval); this process appends one outcome
    every ~20 ms, stamped with the wall time; the lag is when the other replica can first
    search it minus that stamp (p50, p99). PostgreSQL wakes followers with NOTIFY, local
    files are polled;
  * cold start: loading a replica from a snapshot of --base queries plus a tail of --tail
    outcomes (one per new query), against loading the same content from the whole log (an
    empty snapshot and base + tail outcomes).

Vectors are 384-d unit float32 (MiniLM's size). The PostgreSQL is the one in
$EMAFUSION_TEST_PG_URL (or --url; `make pg-up` starts a throwaway one): its defaults keep
fsync and synchronous_commit on, so both stores acknowledge only what is on disk.

Usage:  .venv/bin/python bench/store.py [--quick] [--url postgresql://...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from emafusion.stores.memory import MemorySettings, OutcomeMemory, OutcomeRecord, OutcomeStore
from emafusion.stores.memory.postgres import PostgresStore

DIM = 384
EMBEDDER = "bench-embedder"
ROOT = Path(__file__).resolve().parents[1]
Target = Path | OutcomeStore  # where a memory is saved: a directory or a store


def unit_vectors(n: int, seed: int) -> np.ndarray:
    out = np.random.default_rng(seed).standard_normal((n, DIM), dtype=np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def outcome(i: int, stamp: float = 1e9) -> list[OutcomeRecord]:
    return [OutcomeRecord(model=f"m{i % 8}", score=float(i % 2), source="live_judged",
                          timestamp=stamp)]


def seeded(store: Target, n: int, seed: int) -> OutcomeMemory:
    memory = OutcomeMemory(DIM, EMBEDDER, MemorySettings())
    if n:
        memory.add_many([f"s{i}" for i in range(n)], unit_vectors(n, seed),
                        [outcome(i) for i in range(n)])
    memory.save(store)
    return memory


def append_all(memory: OutcomeMemory, prefix: str, n: int, seed: int, batch: int = 1000) -> None:
    for start in range(0, n, batch):
        count = min(batch, n - start)
        memory.append_many([f"{prefix}{start + j}" for j in range(count)],
                           unit_vectors(count, seed + start),
                           [outcome(start + j) for j in range(count)])


# ------------------------------------------------------------------------------ measures


def appends_per_s(memory: OutcomeMemory, batch: int, seconds: float, cap: int) -> float:
    vectors = unit_vectors(batch * 64, 11)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds and done < cap:
        at = (done // batch) % 64 * batch
        ids = [f"b{batch}-{secrets.token_hex(6)}" for _ in range(batch)]
        memory.append_many(ids, vectors[at : at + batch], [outcome(i) for i in range(batch)])
        done += batch
    return done / (time.perf_counter() - start)


def replication_lag(open_store: Callable[[], Target], spec: str, samples: int) -> list[float]:
    """Lags (s) seen by a follower in another process for `samples` appends from here."""
    writer = OutcomeMemory.load(open_store())
    follower = subprocess.Popen(
        [sys.executable, __file__, "--follow", spec, str(samples)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert follower.stdout is not None
    assert follower.stdout.readline().strip() == "READY"
    time.sleep(1.5)  # it listens / has polled once
    vectors = unit_vectors(samples, 12)
    for i in range(samples):
        writer.append(f"lag-{i}", vectors[i], outcome(i, stamp=time.time()))
        time.sleep(0.02)
    lags = json.loads(follower.stdout.readline())
    follower.wait(timeout=60)
    return [float(x) for x in lags]


def follow_main(spec: str, samples: int) -> None:
    """The other replica: follow, and report when each lag-i first became searchable."""
    kind, where, name = spec.split("|")
    store: Target = PostgresStore(where, name) if kind == "pg" else Path(where)
    memory = OutcomeMemory.load(store)
    memory.follow(1.0)
    print("READY", flush=True)
    lags = []
    for i in range(samples):
        query_id = f"lag-{i}"
        while (stored := memory.get(query_id)) is None:
            time.sleep(0.0005)
        seen = time.time()
        lags.append(seen - next(iter(stored.outcomes.values())).timestamp)
    print(json.dumps(lags), flush=True)
    memory.stop_following()


def cold_starts(
    open_store: Callable[[str], Target], base: int, tail: int, repeats: int
) -> tuple[float, float]:
    """Seconds to load (snapshot of `base` + `tail` log entries, whole log of both)."""
    snap = seeded(open_store("snap"), base, 1)
    append_all(snap, "t", tail, 2)
    whole = seeded(open_store("whole"), 0, 0)
    append_all(whole, "s", base, 1)
    append_all(whole, "t", tail, 2)
    del snap, whole
    times = []
    for name in ("snap", "whole"):
        best = float("inf")
        for _ in range(repeats):  # the best of a few: this machine's disk and CPUs are shared
            start = time.perf_counter()
            loaded = OutcomeMemory.load(open_store(name))
            best = min(best, time.perf_counter() - start)
            assert len(loaded) == base + tail and loaded.log_report.replayed == (
                tail if name == "snap" else base + tail
            ), (name, len(loaded), loaded.log_report)
            del loaded
        times.append(best)
    return times[0], times[1]


def cleanup(url: str, run: str) -> None:
    """Drop this run's memories (their log rows and snapshots go with them)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM emafusion_memories WHERE name LIKE %s", (run + "-%",))


# ------------------------------------------------------------------------------ report


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=os.environ.get("EMAFUSION_TEST_PG_URL"))
    parser.add_argument("--dir", type=Path, help="local store directory (default: temp)")
    parser.add_argument("--base", type=int, default=100_000, help="queries in the snapshot")
    parser.add_argument("--tail", type=int, default=100_000, help="outcomes in the log tail")
    parser.add_argument("--seconds", type=float, default=3.0, help="per append measure")
    parser.add_argument("--lag-samples", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved append rounds")
    parser.add_argument("--repeats", type=int, default=3, help="loads per cold start (best)")
    parser.add_argument("--quick", action="store_true", help="10k + 10k, 1 s, 50 samples")
    parser.add_argument("--follow", nargs=2, metavar=("SPEC", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.follow:
        follow_main(args.follow[0], int(args.follow[1]))
        return
    if args.quick:
        args.base, args.tail, args.seconds, args.lag_samples = 10_000, 10_000, 1.0, 50
        args.rounds, args.repeats = 1, 1
    state = ROOT / ".pg" / "url"
    url = args.url or (state.read_text().strip() if state.is_file() else None)
    if not url:
        raise SystemExit("no PostgreSQL: pass --url, set EMAFUSION_TEST_PG_URL, or `make pg-up`")
    run = f"bench-{secrets.token_hex(3)}"
    local_root = Path(args.dir or tempfile.mkdtemp(prefix="emafusion-bench-store-"))
    stores: dict[str, Callable[[str], Target]] = {
        "local files": lambda name: local_root / name,
        "PostgreSQL": lambda name: PostgresStore(url, f"{run}-{name}"),
    }
    specs = {"local files": f"local|{local_root / 'lag'}|-", "PostgreSQL": f"pg|{url}|{run}-lag"}
    rows: dict[str, dict[str, float]] = {label: {} for label in stores}
    appenders = {label: seeded(o("append"), 1000, 3) for label, o in stores.items()}
    rates: dict[tuple[str, int], list[float]] = {}
    print("appends ...", file=sys.stderr, flush=True)
    for _ in range(args.rounds):  # interleaved rounds, median: the disk is shared and noisy
        for label, memory in appenders.items():
            for batch, cap in ((1, 5_000), (64, 200_000)):
                rate = appends_per_s(memory, batch, args.seconds, cap)
                rates.setdefault((label, batch), []).append(rate)
    for (label, batch), values in rates.items():
        rows[label][f"batch {batch}"] = float(np.median(values))
    for label, open_store in stores.items():
        print(f"[{label}] replication lag ...", file=sys.stderr, flush=True)
        seeded(open_store("lag"), 1000, 4)
        lags = replication_lag(lambda o=open_store: o("lag"), specs[label], args.lag_samples)
        rows[label] |= {"lag p50": pct(lags, 50), "lag p99": pct(lags, 99)}
        print(f"[{label}] cold starts ...", file=sys.stderr, flush=True)
        snap, whole = cold_starts(open_store, args.base, args.tail, args.repeats)
        rows[label] |= {"start snap": snap, "start whole": whole}
    cleanup(url, run)
    local, pg = rows["local files"], rows["PostgreSQL"]
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"{DIM}-d vectors; base {args.base:,} queries, tail {args.tail:,} outcomes; appends: "
          f"median of {args.rounds} rounds of {args.seconds:g} s; starts: best of {args.repeats}\n")
    print("| measure | local files (baseline) | PostgreSQL | PostgreSQL / local |")
    print("|---|---:|---:|---:|")
    lines = [
        ("appends/s, batch 1", "batch 1", "{:,.0f}"),
        ("appends/s, batch 64", "batch 64", "{:,.0f}"),
        ("replication lag p50 (ms)", "lag p50", "ms"),
        ("replication lag p99 (ms)", "lag p99", "ms"),
        (f"cold start: snapshot + {args.tail:,} tail (s)", "start snap", "{:.2f}"),
        (f"cold start: whole log of {args.base + args.tail:,} (s)", "start whole", "{:.2f}"),
    ]
    for title, key, fmt in lines:
        a, b = local[key], pg[key]
        cell = (lambda v: f"{v * 1e3:,.1f}") if fmt == "ms" else fmt.format
        print(f"| {title} | {cell(a)} | {cell(b)} | {b / a:.2f}x |")
    for label, r in rows.items():
        print(f"\n{label}: whole log / snapshot start = {r['start whole'] / r['start snap']:.2f}x")


if __name__ == "__main__":
    main()
