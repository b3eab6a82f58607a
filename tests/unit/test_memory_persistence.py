"""OutcomeMemory generations: save/load round trips, crash safety, damaged files."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from emafusion.stores.memory import (
    INDEX_FILE,
    MANIFEST_FILE,
    MemorySettings,
    OutcomeMemory,
    OutcomeMemoryError,
)
from tests.unit.memory_helpers import DIM, EMBEDDER, E, memory, populated, random_units, rec

# ------------------------------------------------------------------------------ persistence


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_save_load_round_trip(tmp_path: Path, kind: str) -> None:
    mem = populated(kind)
    probes = random_units(25, 32, 99)
    categories = ["math", "code", None, "law", "math"] * 5
    before = mem.predict_batch(probes, ["m0", "m1", "m2", "m3", "new"], 10, categories, now=2e6)
    mem.save(tmp_path)
    loaded = OutcomeMemory.load(tmp_path, expected_embedder_id=EMBEDDER)
    assert loaded.settings == mem.settings
    assert loaded.records() == mem.records()
    assert loaded.model_stats() == mem.model_stats()
    after = loaded.predict_batch(probes, ["m0", "m1", "m2", "m3", "new"], 10, categories, now=2e6)
    assert after == before
    loaded.add("extra", probes[0], [rec("m0", 1.0)])
    extra = loaded.predict(probes[0], ["m0"], now=2e6)["m0"]
    assert extra.evidence.query_ids[0] == "extra"


def test_resave_keeps_one_generation(tmp_path: Path) -> None:
    mem = memory()
    mem.add("x", E[0], [rec("a", 1.0)])
    first = mem.save(tmp_path)
    mem.add("y", E[1], [rec("a", 0.0)])
    second = mem.save(tmp_path)
    assert not first.exists() and second.is_dir()
    assert len(OutcomeMemory.load(tmp_path)) == 2


_KILLED_SAVE = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from emafusion.stores.memory import generations as mm, OutcomeMemory, OutcomeRecord

    directory, reference, target = sys.argv[1:4]

    def batch(n, seed):
        rng = np.random.default_rng(seed)
        vectors = rng.standard_normal((n, 16)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        ids = [f"q{seed}-{i}" for i in range(n)]
        outcomes = [
            [OutcomeRecord(model=f"m{j}", score=float(rng.random()), source="recording",
                              timestamp=1000.0 + i) for j in range(3)]
            for i in range(n)
        ]
        return ids, vectors, outcomes

    memory = OutcomeMemory(16, "fake-embedder")
    memory.add_many(*batch(40, 1))
    memory.save(directory)
    memory.save(reference)
    memory.add_many(*batch(400, 2))

    real_write = mm._write_bytes

    def stalling_write(path, data):
        if target in path.name:
            with open(path, "wb") as fh:
                fh.write(bytes(data[: len(data) // 2]))
                fh.flush()
            print("STALLED", flush=True)
            time.sleep(120)
        real_write(path, data)

    mm._write_bytes = stalling_write
    memory.save(directory)
    print("FINISHED", flush=True)
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
@pytest.mark.parametrize("target", [INDEX_FILE, MANIFEST_FILE])
def test_save_killed_midway_leaves_previous_memory(tmp_path: Path, target: str) -> None:
    directory, reference = tmp_path / "memory", tmp_path / "reference"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_SAVE, str(directory), str(reference), target],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline() if ready else ""
        finished = proc.poll() is not None
        assert line.strip() == "STALLED", proc.stderr.read() if finished and proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

    leftovers = sorted(p.name for p in directory.iterdir())
    if target == INDEX_FILE:
        assert any(name.startswith(".tmp-gen-000002") for name in leftovers), leftovers
    else:
        assert any(name.startswith("gen-000002") for name in leftovers), leftovers

    loaded = OutcomeMemory.load(directory, expected_embedder_id="fake-embedder")
    expected = OutcomeMemory.load(reference)
    assert len(loaded) == 40
    assert loaded.records() == expected.records()
    probes = random_units(5, 16, 3)
    models = ["m0", "m1", "m2"]
    assert loaded.predict_batch(probes, models, now=5e3) == expected.predict_batch(
        probes, models, now=5e3
    )

    # The next save recovers: it cleans up the interrupted generation.
    loaded.add("after", probes[0], [rec("m0", 1.0)])
    final = loaded.save(directory)
    names = sorted(p.name for p in directory.iterdir())
    assert names == sorted([".lock", MANIFEST_FILE, "log", final.name])
    assert len(OutcomeMemory.load(directory)) == 41


def test_load_rejects_other_embedder(tmp_path: Path) -> None:
    mem = memory()
    mem.add("q", E[0], [rec("a", 1.0)])
    mem.save(tmp_path)
    with pytest.raises(OutcomeMemoryError, match="built with embedder 'test-embedder'.*Rebuild"):
        OutcomeMemory.load(tmp_path, expected_embedder_id="another-embedder")


def _saved(tmp_path: Path) -> Path:
    mem = memory()
    mem.add_many([f"q{i}" for i in range(DIM)], E, [[rec("a", 1.0)]] * DIM)
    return mem.save(tmp_path)


def test_load_missing_index_file(tmp_path: Path) -> None:
    (_saved(tmp_path) / INDEX_FILE).unlink()
    with pytest.raises(OutcomeMemoryError, match="index.faiss is missing"):
        OutcomeMemory.load(tmp_path)


def test_load_truncated_index_file(tmp_path: Path) -> None:
    index_path = _saved(tmp_path) / INDEX_FILE
    data = index_path.read_bytes()
    index_path.write_bytes(data[: len(data) // 3])
    with pytest.raises(OutcomeMemoryError, match="truncated"):
        OutcomeMemory.load(tmp_path)


def test_load_without_a_saved_memory(tmp_path: Path) -> None:
    with pytest.raises(OutcomeMemoryError, match="no saved OutcomeMemory"):
        OutcomeMemory.load(tmp_path)


def test_load_newer_format(tmp_path: Path) -> None:
    _saved(tmp_path)
    manifest_path = tmp_path / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest["format_version"] = 99
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(OutcomeMemoryError, match="format_version 99.*upgrade"):
        OutcomeMemory.load(tmp_path)


def test_load_with_other_index_kind(tmp_path: Path) -> None:
    _saved(tmp_path)
    with pytest.raises(OutcomeMemoryError, match="index_kind"):
        OutcomeMemory.load(tmp_path, settings=MemorySettings(index_kind="hnsw"))
    tuned = OutcomeMemory.load(tmp_path, settings=MemorySettings(k=3, shrinkage=0.0))
    assert tuned.settings.k == 3


def test_load_corrupt_index_file(tmp_path: Path) -> None:
    index_path = _saved(tmp_path) / INDEX_FILE
    data = bytearray(index_path.read_bytes())
    data[-1] ^= 0xFF
    index_path.write_bytes(bytes(data))
    with pytest.raises(OutcomeMemoryError, match="sha256"):
        OutcomeMemory.load(tmp_path)
