"""Many processes recording into one memory: nothing lost, kills survived, refresh works.

Real processes (tests/unit/memory_worker.py), real files, real FAISS.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from emafusion.stores.memory import MemorySettings, OutcomeMemory, OutcomeRecord

WORKER = Path(__file__).with_name("memory_worker.py")
DIM = 16  # the worker's
pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX")


def seeded(directory: Path) -> OutcomeMemory:
    """A saved memory of 10 recordings, for the workers to record into."""
    mem = OutcomeMemory(DIM, "worker-embedder", MemorySettings(k=5, judged_weight=0.5))
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((10, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    mem.add_many(
        [f"base{i}" for i in range(10)],
        vectors,
        [[OutcomeRecord(model="w0", score=1.0, source="recording")]] * 10,
    )
    mem.save(directory)
    return mem


def start(mode: str, directory: Path, worker: int, count: int, go: Path | None = None):  # type: ignore[no-untyped-def]
    args = [sys.executable, str(WORKER), mode, str(directory), str(worker), str(count)]
    return subprocess.Popen(
        [*args, *([str(go)] if go else [])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,  # unbuffered: wait_for selects on the pipe itself
    )


def wait_for(proc: subprocess.Popen[bytes], word: str, timeout: float = 120) -> list[str]:
    """Lines the process printed up to and including `word` (fails if it exits first)."""
    assert proc.stdout is not None
    fd, pending = proc.stdout.fileno(), b""
    lines: list[str] = []
    while True:
        ready, _, _ = select.select([fd], [], [], timeout)
        chunk = os.read(fd, 65536) if ready else b""
        if not chunk:
            proc.kill()
            _, err = proc.communicate()
            raise AssertionError(f"worker ended before {word!r}: {lines}\n{err.decode()}")
        pending += chunk
        *done, pending = pending.split(b"\n")
        lines += [line.decode().strip() for line in done]
        if word in lines:
            return lines


def kill(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def assert_all_recorded(mem: OutcomeMemory, workers: range, count: int) -> None:
    for w in workers:
        for i in range(count):
            stored = mem.get(f"w{w}-{i}")
            assert stored is not None, f"w{w}-{i} lost"
            assert stored.judged[f"w{w}"].score == (i % 4) / 4
    for j in range(min(count, 5)):
        shared = mem.get(f"shared-{j}")
        assert shared is not None
        assert set(shared.judged) >= {f"w{w}" for w in workers}, shared.judged
        for w in workers:
            last = max(i for i in range(count) if i % 5 == j)
            assert shared.judged[f"w{w}"].timestamp == 1000.0 + last


@pytest.mark.parametrize("mode", ["append", "append-compact", "add-save"])
def test_four_writers_lose_nothing(tmp_path: Path, mode: str) -> None:
    directory, go = tmp_path / "memory", tmp_path / "go"
    seeded(directory)
    procs = [start(mode, directory, w, 25, go) for w in range(4)]
    go.touch()
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
        assert out.split()[-1] == b"DONE"
    mem = OutcomeMemory.load(directory)
    assert len(mem) == 10 + 4 * 25 + 5
    assert_all_recorded(mem, range(4), 25)
    assert mem.log_report.dropped == 0
    mem.compact()
    again = OutcomeMemory.load(directory)
    assert again.records() == mem.records()
    assert again.log_report.replayed == 0  # all of it is in the generation now


def test_writer_killed_mid_append_loses_only_the_torn_record(tmp_path: Path) -> None:
    directory = tmp_path / "memory"
    seeded(directory)
    proc = start("tear-append", directory, 1, 6)
    acked = [line for line in wait_for(proc, "HUNG") if line.startswith("ACK")]
    kill(proc)
    assert len(acked) == 6
    mem = OutcomeMemory.load(directory)
    assert_all_recorded(mem, range(1, 2), 6)
    assert "w1-torn" not in mem
    report = mem.log_report
    assert report.dropped == 1 and report.dropped_bytes > 0
    assert any("seg-" in name for name in report.damaged_files)
    # Appending goes on after the torn tail (in a new segment), and nothing is lost.
    record = OutcomeRecord(model="x", score=1.0, source="recording")
    mem.append("after", mem.vector("w1-0"), [record])
    reloaded = OutcomeMemory.load(directory)
    assert "after" in reloaded and reloaded.log_report.dropped == 1
    assert reloaded.records() == mem.records()
    # Compaction folds the log and keeps count of what it dropped.
    reloaded.compact()
    final = OutcomeMemory.load(directory)
    assert final.records() == reloaded.records()
    assert (final.log_report.dropped, final.log_report.dropped_before) == (0, 1)


@pytest.mark.parametrize("target", ["index.faiss", "MANIFEST.json", "discard"])
def test_compaction_killed_midway_loses_nothing(tmp_path: Path, target: str) -> None:
    directory = tmp_path / "memory"
    seeded(directory)
    observer = OutcomeMemory.load(directory)
    proc = start(f"hang-compact:{target}", directory, 1, 8)
    wait_for(proc, "HUNG")
    # The compactor holds the directory lock; appends go on meanwhile.
    record = OutcomeRecord(model="x", score=0.0, source="recording")
    observer.append("during", observer.vector("base0"), [record])
    kill(proc)
    mem = OutcomeMemory.load(directory)
    assert_all_recorded(mem, range(1, 2), 8)
    assert "during" in mem and len(mem) == 10 + 8 + 5 + 1
    assert mem.log_report.dropped == 0
    leftovers = {p.name for p in directory.iterdir()}
    if target == "discard":  # the new generation was published, its log not trimmed yet
        assert sum(name.startswith("gen-") for name in leftovers) == 1
    mem.compact()  # the next compaction cleans up and folds everything
    final = OutcomeMemory.load(directory)
    assert final.records() == mem.records()
    names = [p.name for p in directory.iterdir()]
    assert sum(n.startswith("gen-") for n in names) == 1
    assert not [n for n in names if n.startswith(".tmp")]
    assert len(list((directory / "log").glob("seg-*.log"))) == 1


def test_refresh_sees_other_processes_appends(tmp_path: Path) -> None:
    directory = tmp_path / "memory"
    seeded(directory)
    reader = OutcomeMemory.load(directory)
    probe = reader.vector("base0")
    before = reader.predict(probe, ["w2"])["w2"]
    assert before.judged_count == 0
    run("append", directory, 2, 10)
    assert reader.refresh() == 20  # two entries per outcome: its own query and a shared one
    assert_all_recorded(reader, range(2, 3), 10)
    assert reader.refresh() == 0
    after = reader.predict(probe, ["w2"])["w2"]
    assert after.judged_count > 0 and after.p_success != before.p_success  # judged_weight 0.5
    # Another process compacts what this one has read: tailing just goes on.
    run("compact", directory, 0)
    generation = reader._attached.generation  # type: ignore[union-attr]
    run("append", directory, 3, 4)
    assert reader.refresh() == 8
    assert reader._attached.generation != generation  # type: ignore[union-attr]
    assert_all_recorded(reader, range(3, 4), 4)
    # One compacts past what this one has read: refresh reloads, and has everything.
    run("append-compact", directory, 4, 3)
    reader.refresh()
    assert_all_recorded(reader, range(4, 5), 3)
    assert reader.records() == OutcomeMemory.load(directory).records()


def run(mode: str, directory: Path, worker: int, count: int = 0) -> None:
    proc = start(mode, directory, worker, count)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
