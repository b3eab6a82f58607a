"""Router replicas in separate processes on one real PostgreSQL: feedback given to one moves
another's prediction within 2 s; a writer SIGKILLed mid-batch loses nothing it acknowledged;
4 processes x 4 writers, 10,000 outcomes: none lost, none duplicated, and a replica tailing
meanwhile applies each exactly once."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psycopg
import pytest

from emafusion.stores.memory import MemorySettings, OutcomeMemory, OutcomeRecord
from emafusion.stores.memory.postgres import PostgresStore
from emafusion.stores.recordings import RecordSet, write_jsonl
from tests import synthetic

WORKER = Path(__file__).with_name("pg_worker.py")
ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX")


class Process:
    """A worker process, read line by line (select on its pipe, with a timeout)."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        self.lines: list[str] = []
        self._pending = b""

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")

    def read(self, prefix: str, timeout: float = 120) -> str:
        """The next line starting with `prefix` (fails if the process ends first)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._pending:
                raw, self._pending = self._pending.split(b"\n", 1)
                line = raw.decode().strip()
                self.lines.append(line)
                if line.startswith(prefix):
                    return line
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(fd, 65536) if ready else b""
            if not chunk:
                self.proc.kill()
                _, err = self.proc.communicate()
                raise AssertionError(f"ended before {prefix!r}: {self.lines}\n{err.decode()}")
            self._pending += chunk

    def kill(self) -> None:
        """SIGKILL it, then read what it had printed (its acknowledgements) to the end."""
        os.kill(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait(timeout=30) == -signal.SIGKILL
        assert self.proc.stdout is not None
        rest = self._pending + self.proc.stdout.read()
        self.lines += [line.strip() for line in rest.decode().splitlines() if line.strip()]
        self._pending = b""
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def seeded(url: str, name: str) -> None:
    """A saved memory of 10 recordings in the database, for the workers to write into."""
    mem = OutcomeMemory(16, "worker-embedder", MemorySettings(k=5))
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((10, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    mem.add_many(
        [f"base{i}" for i in range(10)],
        vectors,
        [[OutcomeRecord(model="w", score=1.0, source="recording")]] * 10,
    )
    mem.save(PostgresStore(url, name))


def test_feedback_given_to_replica_a_changes_replica_b_within_2_s(
    pg_url: str, tmp_path: Path, synthetic_records: RecordSet
) -> None:
    recordings, pool = tmp_path / "synthetic.jsonl", tmp_path / "pool.toml"
    write_jsonl(synthetic_records.records, recordings)
    pool.write_text(
        "".join(
            f'[[models]]\nname = "{m}"\nprovider = "replay"\n'
            f"input_per_1m = {p}\noutput_per_1m = {p}\n\n"
            for m, (p, _) in synthetic.MODELS.items()
        )
    )
    settings = tmp_path / "settings.json"
    settings.write_text(
        json.dumps(
            {
                "recordings": str(recordings),
                "pool": str(pool),
                "router_dir": str(tmp_path / "router"),
                "store_url": pg_url,
            }
        )
    )
    a = Process("replica", str(settings))
    a.read("READY")  # A builds the router dir and seeds the database; B then loads it
    b = Process("replica", str(settings))
    try:
        b.read("READY")
        record, model = next(
            (r, m)
            for r in synthetic_records.split("train")
            for m, o in r.outcomes.items()
            if o.score == 0.0
        )
        b.send(f"predict {record.id} {model}")
        before = float(b.read("P ").split()[1])
        b.send(f"watch {record.id} {model} {before!r}")
        start = time.monotonic()
        a.send(f"feedback {record.id} {model} 1.0")  # the user says this answer was right
        assert a.read("ACK ") == "ACK True"
        changed = b.read("CHANGED", timeout=10)
        elapsed = time.monotonic() - start
        after = float(changed.split()[1])
        assert after > before, (before, after)
        assert elapsed < 2.0, f"replica B saw the feedback after {elapsed:.3f} s"
        print(f"feedback on A moved B's p({model}) {before:.3f} -> {after:.3f} in {elapsed:.3f} s")
    finally:
        a.close()
        b.close()


def count_rows(url: str, name: str, prefix: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT query_id, count(*) FROM emafusion_outcomes WHERE memory = %s AND "
            "query_id LIKE %s GROUP BY query_id",
            (name, prefix + "%"),
        ).fetchall()
    return {q: int(n) for q, n in rows}


def test_a_writer_sigkilled_during_a_batch_loses_nothing_it_acknowledged(pg_url: str) -> None:
    seeded(pg_url, "kill")
    size = 16
    # Killed inside its transaction: rows written, commit not reached.
    hung = Process("append", pg_url, "kill", "0", "5", str(size), "hang")
    hung.read("HUNG")
    hung.kill()
    # Killed at a moment nobody chose, while it writes batch after batch.
    busy = Process("append", pg_url, "kill", "1", "100000", str(size))
    busy.read("ACK 20")
    time.sleep(0.05 + np.random.default_rng().random() * 0.1)
    busy.kill()
    acked = {0: 5, 1: 1 + max(int(x.split()[1]) for x in busy.lines if x.startswith("ACK"))}
    memory = OutcomeMemory.load(PostgresStore(pg_url, "kill"))
    lost, partial = 0, 0
    for worker in (0, 1):
        rows = count_rows(pg_url, "kill", f"a{worker}-")
        batches: dict[int, int] = {}
        for query_id in rows:
            number = int(query_id.split("-")[1])
            batches[number] = batches.get(number, 0) + 1
        partial += sum(1 for n in batches.values() if n != size)
        for b in range(acked[worker]):
            lost += sum(1 for j in range(size) if f"a{worker}-{b}-{j}" not in memory)
        assert set(batches) <= set(range(acked[worker] + 1))  # at most the unacked one more
    assert f"a0-{5}-0" not in memory  # the stalled batch never committed
    print(f"acknowledged {sum(acked.values()) * size} entries, lost {lost}, partial {partial}")
    assert lost == 0 and partial == 0
    assert memory.log_report.dropped == 0


def test_4_processes_x_4_writers_10000_outcomes_none_lost_none_duplicated(
    pg_url: str, tmp_path: Path
) -> None:
    seeded(pg_url, "many")
    tail = OutcomeMemory.load(PostgresStore(pg_url, "many"))
    tail.follow(interval_s=0.5)  # tails the log while 16 writers append to it
    go = tmp_path / "go"
    procs = [Process("writers", pg_url, "many", str(p), "4", "2500", str(go)) for p in range(4)]
    try:
        time.sleep(1.0)  # let them connect, then start them together
        go.touch()
        acked = sum(int(p.read("DONE", timeout=300).split()[1]) for p in procs)
        assert acked == 10_000
        rows = count_rows(pg_url, "many", "p")
        assert len(rows) == 10_000 and set(rows.values()) == {1}  # 0 lost, 0 duplicated
        deadline = time.monotonic() + 10
        while len(tail) < 10_010 and time.monotonic() < deadline:
            time.sleep(0.05)
        # The tailing replica applied every entry exactly once, in no order it chose.
        assert len(tail) == 10_010 and tail.log_report.replayed == 10_000
        fresh = OutcomeMemory.load(PostgresStore(pg_url, "many"))
        assert len(fresh) == 10_010 and fresh.log_report.replayed == 10_000
    finally:
        tail.stop_following()
        for p in procs:
            p.close()
