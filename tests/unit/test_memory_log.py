"""The outcome log in one process: append, replay, refresh, compact, save merges, bad files."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from emafusion.stores.memory import MemorySettings, OutcomeMemory, OutcomeMemoryError
from emafusion.stores.memory.log import RECORD_MAGIC
from tests.unit.memory_helpers import DIM, EMBEDDER, E, memory, random_units, rec, unit


def saved(directory: Path, n: int = 8) -> OutcomeMemory:
    mem = memory()
    mem.add_many([f"r{i}" for i in range(n)], random_units(n, DIM, 1), [[rec("a", 1.0)]] * n)
    mem.save(directory)
    return mem


def segments(directory: Path) -> list[Path]:
    return sorted((directory / "log").glob("seg-*.log"))


def test_append_is_durable_without_a_new_generation(tmp_path: Path) -> None:
    mem = saved(tmp_path)
    generations = sorted(p.name for p in tmp_path.glob("gen-*"))
    first = mem.append("live", E[0], [rec("a", 0.0, source="live_judged")], category="math")
    batch = mem.append_many(
        ["r0", "live"], None, [[rec("b", 1.0)], [rec("b", 0.5, source="user_feedback")]]
    )
    assert first < batch[0] < batch[1]  # positions are sequence numbers
    assert sorted(p.name for p in tmp_path.glob("gen-*")) == generations
    loaded = OutcomeMemory.load(tmp_path)
    assert loaded.records() == mem.records()
    assert loaded.log_report.replayed == 3 and loaded.log_report.dropped == 0
    stored = loaded.get("live")
    assert stored is not None and stored.predicted_category == "math"
    assert stored.judged["a"].score == 0.0 and stored.ground_truth["b"].score == 0.5


def test_append_needs_a_saved_memory() -> None:
    with pytest.raises(OutcomeMemoryError, match=r"not saved anywhere.*save\(directory\)"):
        memory().append("q", E[0], [rec("a", 1.0)])


def test_bad_append_writes_nothing(tmp_path: Path) -> None:
    mem = saved(tmp_path)
    sizes = [p.stat().st_size for p in segments(tmp_path)]
    with pytest.raises(OutcomeMemoryError, match=r"dimension 5.*8-d.*test-embedder"):
        mem.append("q", unit(np.ones(5)), [rec("a", 1.0)])
    with pytest.raises(OutcomeMemoryError, match="score must be in"):
        mem.append_many(
            ["x", "y"],
            np.stack([E[0], E[1]]),
            [[rec("a", 1.0)], [{"model": "a", "score": 2.0, "source": "recording"}]],
        )
    with pytest.raises(OutcomeMemoryError, match="not in the memory yet"):
        mem.append("ghost", None, [rec("a", 1.0)])
    assert [p.stat().st_size for p in segments(tmp_path)] == sizes
    assert "q" not in mem and "x" not in mem


def test_refresh_tails_what_another_memory_appended(tmp_path: Path) -> None:
    writer, reader = saved(tmp_path), OutcomeMemory.load(tmp_path)
    writer.append("new", E[0], [rec("z", 1.0)])
    writer.append("r1", None, [rec("z", 0.0)])
    assert "new" not in reader
    assert reader.refresh() == 2
    assert reader.records() == writer.records()
    assert writer.refresh() == 0  # its own appends are not applied twice
    # After the writer compacts what the reader has read, the reader keeps tailing.
    writer.compact()
    writer.append("later", E[1], [rec("z", 1.0)])
    assert reader.refresh() == 1
    assert reader.records() == writer.records()


def test_refresh_reloads_after_a_compaction_past_it(tmp_path: Path) -> None:
    writer, reader = saved(tmp_path), OutcomeMemory.load(tmp_path)
    writer.append("new", E[0], [rec("z", 1.0)])
    writer.compact()  # folds "new", which the reader never read, into the generation
    reader.refresh()
    assert reader.records() == writer.records()


def test_compact_folds_the_log_into_a_generation(tmp_path: Path) -> None:
    mem = saved(tmp_path)
    for i in range(5):
        mem.append(f"l{i}", unit(E[i] + E[7]), [rec("a", 0.0, source="live_judged")])
    assert len(segments(tmp_path)) == 1
    before = mem.predict(E[0], ["a"])
    generation = mem.compact()
    assert generation.is_dir() and len(list(tmp_path.glob("gen-*"))) == 1
    [segment] = segments(tmp_path)
    assert segment.name != "seg-00000000000000000000.log"  # a new, empty segment
    loaded = OutcomeMemory.load(tmp_path)
    assert loaded.log_report.replayed == 0
    assert loaded.records() == mem.records()
    assert loaded.predict(E[0], ["a"]) == before


def test_threads_appending_to_one_memory_lose_nothing(tmp_path: Path) -> None:
    mem = saved(tmp_path)

    def writer(w: int) -> None:
        vectors = random_units(10, DIM, 100 + w)
        for i in range(10):
            mem.append(f"t{w}-{i}", vectors[i], [rec(f"m{w}", 0.5)])

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    loaded = OutcomeMemory.load(tmp_path)
    assert all(f"t{w}-{i}" in loaded for w in range(6) for i in range(10))
    assert loaded.records() == mem.records()


def test_save_of_a_rebuild_keeps_live_outcomes(tmp_path: Path) -> None:
    live = saved(tmp_path)
    live.append("live", E[0], [rec("a", 0.0, source="live_judged")], category="code")
    live.append("r0", None, [rec("b", 0.0, source="user_feedback")])
    live.append("r1", None, [rec("c", 1.0)])  # a recording appended through the log
    live.compact()
    live.append("late", E[1], [rec("a", 1.0, source="live_judged")])  # not compacted
    # A fresh build from other recordings (r0..r3 only) replaces the directory's memory.
    rebuilt = memory()
    rebuilt.add_many(
        [f"r{i}" for i in range(4)], random_units(8, DIM, 1)[:4], [[rec("a", 0.5)]] * 4
    )
    rebuilt.save(tmp_path)
    loaded = OutcomeMemory.load(tmp_path)
    assert "live" in loaded and "late" in loaded  # live outcomes merged
    assert loaded.get("live").predicted_category == "code"  # type: ignore[union-attr]
    assert loaded.get("r0").ground_truth["b"].source == "user_feedback"  # type: ignore[union-attr]
    assert loaded.get("r0").ground_truth["a"].score == 0.5  # type: ignore[union-attr]
    assert "r5" not in loaded  # recordings are the rebuild's
    assert "c" not in loaded.get("r1").outcomes  # type: ignore[union-attr]


def test_save_over_live_outcomes_of_another_embedder_is_refused(tmp_path: Path) -> None:
    mem = saved(tmp_path)
    other = OutcomeMemory(DIM * 2, "other-embedder")
    other.add("q", unit(np.ones(DIM * 2)), [rec("a", 1.0)])
    other.save(tmp_path / "elsewhere")  # fine
    mem.append("live", E[0], [rec("a", 0.0, source="live_judged")])
    with pytest.raises(OutcomeMemoryError, match=r"1 live outcome.*'test-embedder'.*another dir"):
        other.save(tmp_path)
    assert OutcomeMemory.load(tmp_path).records() == mem.records()
    # Without live outcomes the rebuild with a new embedder replaces it, log and all.
    fresh = tmp_path / "recordings-only"
    saved(fresh)
    other.save(fresh)
    other.append("q2", unit(np.arange(DIM * 2) + 1.0), [rec("a", 1.0)])
    loaded = OutcomeMemory.load(fresh, expected_embedder_id="other-embedder")
    assert loaded.query_ids == ["q", "q2"]


# ------------------------------------------------------------------------------ damaged logs


def test_corrupt_log_header_names_the_file_and_the_fix(tmp_path: Path) -> None:
    mem = saved(tmp_path)
    mem.append("live", E[0], [rec("a", 0.0)])
    [segment] = segments(tmp_path)
    data = bytearray(segment.read_bytes())
    data[12] ^= 0xFF  # inside the header's JSON
    segment.write_bytes(bytes(data))
    with pytest.raises(OutcomeMemoryError, match=rf"{segment}.*damaged header.*backup.*move it"):
        OutcomeMemory.load(tmp_path)
    segment.write_bytes(b"not a log segment at all")
    with pytest.raises(OutcomeMemoryError, match=rf"{segment} is not an outcome-log segment"):
        OutcomeMemory.load(tmp_path)


def test_segment_of_a_foreign_embedder_is_refused(tmp_path: Path) -> None:
    mem = saved(tmp_path / "ours")
    foreign = OutcomeMemory(DIM, "foreign-embedder")
    foreign.add("f", E[0], [rec("a", 1.0)])
    foreign.save(tmp_path / "theirs")
    foreign.append("g", E[1], [rec("a", 1.0)])
    [ours] = segments(tmp_path / "ours")
    [theirs] = segments(tmp_path / "theirs")
    shutil.copy(theirs, ours)  # same name (both start at 0), someone else's outcomes
    with pytest.raises(OutcomeMemoryError, match=rf"{ours} holds outcomes of embedder 'foreign"):
        OutcomeMemory.load(tmp_path / "ours")
    assert len(mem) == 8


def test_segment_of_another_dimension_is_refused(tmp_path: Path) -> None:
    saved(tmp_path / "ours")
    wide = OutcomeMemory(DIM + 1, EMBEDDER)
    wide.add("f", unit(np.ones(DIM + 1)), [rec("a", 1.0)])
    wide.save(tmp_path / "wide")
    wide.append("g", unit(np.arange(DIM + 1) + 1.0), [rec("a", 1.0)])
    [ours], [theirs] = segments(tmp_path / "ours"), segments(tmp_path / "wide")
    shutil.copy(theirs, ours)
    with pytest.raises(OutcomeMemoryError, match=rf"{ours}.*\(9-d vectors\).*\(8-d\)"):
        OutcomeMemory.load(tmp_path / "ours")


def test_corrupt_record_is_dropped_and_counted_the_rest_kept(tmp_path: Path) -> None:
    mem = saved(tmp_path)
    for i in range(3):
        mem.append(f"l{i}", unit(E[i] + E[5]), [rec("a", 0.25 * i)])
    [segment] = segments(tmp_path)
    data = bytearray(segment.read_bytes())
    magic = RECORD_MAGIC.to_bytes(4, "little")
    second = data.index(magic, data.index(magic) + 1)
    data[second + 40] ^= 0xFF  # inside the second record's payload
    segment.write_bytes(bytes(data))
    loaded = OutcomeMemory.load(tmp_path)
    assert "l0" in loaded and "l1" not in loaded and "l2" in loaded
    assert (loaded.log_report.dropped, loaded.log_report.damaged_files) == (1, (str(segment),))


def test_torn_tail_is_dropped_and_the_log_goes_on(tmp_path: Path) -> None:
    mem = saved(tmp_path)
    mem.append("kept", E[0], [rec("a", 1.0)])
    mem.append("torn", E[1], [rec("a", 1.0)])
    [segment] = segments(tmp_path)
    size = segment.stat().st_size
    with segment.open("r+b") as fh:
        fh.truncate(size - 10)  # what a writer killed mid-append leaves
    loaded = OutcomeMemory.load(tmp_path)
    assert "kept" in loaded and "torn" not in loaded
    assert loaded.log_report.dropped == 1
    loaded.append("next", E[2], [rec("a", 0.0)])
    assert len(segments(tmp_path)) == 2  # never written behind the torn bytes
    again = OutcomeMemory.load(tmp_path)
    assert "next" in again and again.log_report.dropped == 1


def test_load_of_a_memory_saved_with_judged_weight(tmp_path: Path) -> None:
    mem = OutcomeMemory(DIM, EMBEDDER, MemorySettings(judged_weight=0.25))
    mem.add("q", E[0], [rec("a", 1.0, source="live_judged")])
    mem.save(tmp_path)
    loaded = OutcomeMemory.load(tmp_path)
    assert loaded.settings.judged_weight == 0.25
    assert loaded.predict(E[0], ["a"]) == mem.predict(E[0], ["a"])


def test_rebuild_over_a_damaged_memory_is_refused_with_the_fix(tmp_path: Path) -> None:
    saved(tmp_path).append("live", E[0], [rec("a", 0.0, source="live_judged")])
    [generation] = tmp_path.glob("gen-*")
    (generation / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(
        OutcomeMemoryError, match=r"without reading its live outcomes.*Move .* aside"
    ):
        memory().save(tmp_path)
    assert len(segments(tmp_path)) == 1 and segments(tmp_path)[0].stat().st_size > 100
