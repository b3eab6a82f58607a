"""A separate process on the shared PostgreSQL memory, for the multi-process tests.

    python tests/integration/pg_worker.py replica SETTINGS.json
    python tests/integration/pg_worker.py append URL NAME WORKER BATCHES BATCH_SIZE [hang]
    python tests/integration/pg_worker.py writers URL NAME PROCESS THREADS COUNT GO_FILE

- ``replica``: a router replica (`load_router` with a store URL; the hash embedder stands in
  for MiniLM) driven by lines on stdin: ``predict QID MODEL`` prints ``P <p>``;
  ``watch QID MODEL P`` prints ``CHANGED <p>`` once the prediction moves off P (``TIMEOUT``
  after 10 s); ``feedback QID MODEL SCORE`` stores user feedback and prints ``ACK <durable>``.
- ``append``: BATCHES batches of BATCH_SIZE entries (query ``a{WORKER}-{batch}-{j}``), printing
  ``ACK <batch>`` once each is committed; with ``hang``, one more batch then stalls inside
  its transaction, after its rows are written and before the commit (the test SIGKILLs it).
- ``writers``: THREADS threads, each with its own memory and connection, together writing
  COUNT entries (query ``p{PROCESS}-t{thread}-{i}``) in batches of 1 to 8, from when
  GO_FILE exists; prints ``DONE <acknowledged>``.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np

from emafusion.stores.memory import OutcomeMemory, OutcomeRecord, postgres_log
from emafusion.stores.memory.postgres import PostgresStore

DIM = 16


def vector(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def outcome(i: int) -> OutcomeRecord:
    return OutcomeRecord(model="w", score=(i % 4) / 4, source="live_judged", timestamp=1000.0 + i)


def replica(settings_file: str) -> None:
    from emafusion.nodes import resources as resources_module
    from emafusion.nodes.feedback import submit_feedback
    from emafusion.nodes.resources import DeploymentSettings, load_router
    from emafusion.stores.embeddings import HashEmbedder

    resources_module.default_embedder = HashEmbedder  # type: ignore[assignment]
    raw = json.loads(Path(settings_file).read_text())
    settings = DeploymentSettings(
        recordings=Path(raw["recordings"]),
        pool=Path(raw["pool"]),
        router_dir=Path(raw["router_dir"]),
        store_url=raw["store_url"],
    )
    resources = load_router(settings)
    memory = resources.memory

    def predict(query_id: str, model: str) -> float:
        return memory.predict(memory.vector(query_id), [model])[model].p_success

    print("READY", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "predict":
            print(f"P {predict(words[1], words[2])!r}", flush=True)
        elif words[0] == "watch":
            start, before = time.monotonic(), float(words[3])
            while (now := predict(words[1], words[2])) == before:
                if time.monotonic() - start > 10:
                    print("TIMEOUT", flush=True)
                    break
                time.sleep(0.002)
            else:
                print(f"CHANGED {now!r}", flush=True)
        elif words[0] == "feedback":
            receipt = submit_feedback(
                resources, query_id=words[1], model=words[2], score=float(words[3])
            )
            print(f"ACK {receipt.durable}", flush=True)
        elif words[0] == "quit":
            break


def append(url: str, name: str, worker: int, batches: int, size: int, hang: bool) -> None:
    memory = OutcomeMemory.load(PostgresStore(url, name))
    print("READY", flush=True)

    def batch(b: int) -> list[int]:
        ids = [f"a{worker}-{b}-{j}" for j in range(size)]
        vectors = np.stack([vector(worker * 10**6 + b * 1000 + j) for j in range(size)])
        return memory.append_many(ids, vectors, [[outcome(b)]] * size)

    for b in range(batches):
        positions = batch(b)
        assert min(positions) >= 0, positions
        print(f"ACK {b}", flush=True)
    if hang:

        def stall() -> None:
            print("HUNG", flush=True)
            time.sleep(600)

        postgres_log._before_commit = stall
        batch(batches)


def writers(url: str, name: str, process: int, threads: int, count: int, go: str) -> None:
    share = [count // threads + (1 if t < count % threads else 0) for t in range(threads)]
    memories = [OutcomeMemory.load(PostgresStore(url, name)) for _ in range(threads)]
    acked = [0] * threads

    def run(t: int) -> None:
        rng = np.random.default_rng(process * 100 + t)
        i = 0
        while i < share[t]:
            n = min(int(rng.integers(1, 9)), share[t] - i)
            ids = [f"p{process}-t{t}-{i + j}" for j in range(n)]
            vectors = np.stack([vector(zlib.crc32(q.encode())) for q in ids])
            positions = memories[t].append_many(ids, vectors, [[outcome(i + j)] for j in range(n)])
            assert min(positions) >= 0, positions
            acked[t] += n
            i += n

    while not Path(go).exists():
        time.sleep(0.005)
    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    print(f"DONE {sum(acked)}", flush=True)


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "replica":
        replica(args[0])
    elif mode == "append":
        append(args[0], args[1], int(args[2]), int(args[3]), int(args[4]), args[5:] == ["hang"])
    elif mode == "writers":
        writers(args[0], args[1], int(args[2]), int(args[3]), int(args[4]), args[5])
    else:
        raise SystemExit(f"unknown mode {mode!r}")
