"""The parsed-recordings cache: a hit equals a fresh parse; a changed input, a damaged or a
foreign cache file is never used (rebuilt, with a one-line note); failures are not cached."""

from __future__ import annotations

import json
import logging
import os
import pickle
import zipfile
from pathlib import Path

import pytest

from emafusion.stores.cached_file import manifest_path
from emafusion.stores.recordings import RecordingError, RecordSet, load_dataset, load_mmlu_pro
from emafusion.stores.recordings import cache as rcache
from emafusion.stores.recordings import jsonl as jsonl_module


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "cache"
    monkeypatch.setenv("EMAFUSION_CACHE_DIR", str(directory))
    monkeypatch.delenv(rcache.CACHE_ENV, raising=False)
    monkeypatch.delenv(rcache.CACHE_DIR_ENV, raising=False)
    return directory


def _record(i: int, **overrides: object) -> dict[str, object]:
    line: dict[str, object] = {
        "id": f"q{i}",
        "dataset": "mine",
        "category": "math" if i % 2 else "law",
        "query": f"question {i}?",
        "outcomes": {
            "a": {"response": f"answer {i}", "score": 1.0, "cost_usd": 0.001},
            "b": {"score": 0.25, "input_tokens": 3, "output_tokens": 1},
        },
    }
    if i % 3:
        line["reference"] = "B"  # some lines omit it: fields_set differs per record
    line.update(overrides)
    return line


def _jsonl(path: Path, n: int = 6, **overrides: object) -> Path:
    path.write_text("".join(json.dumps(_record(i, **overrides)) + "\n" for i in range(n)))
    return path


def _cache_files(cache_dir: Path) -> list[Path]:
    return sorted((cache_dir / "recordings").glob("*.pickle"))


def _same(a: RecordSet, b: RecordSet) -> None:
    assert a.records == b.records
    assert [r.model_dump() for r in a.records] == [r.model_dump() for r in b.records]
    assert [r.model_fields_set for r in a.records] == [r.model_fields_set for r in b.records]
    for ra, rb in zip(a.records, b.records, strict=True):
        assert list(ra.outcomes) == list(rb.outcomes)
        for oa, ob in zip(ra.outcomes.values(), rb.outcomes.values(), strict=True):
            assert oa.model_fields_set == ob.model_fields_set
    assert (a.name, a.source, a.skipped, a.notes) == (b.name, b.source, b.skipped, b.notes)
    assert a.published_row_cost_per_1k == b.published_row_cost_per_1k
    assert a.split_sizes() == b.split_sizes() and a.models == b.models


def _count_parses(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []
    real = jsonl_module.load_jsonl

    def counting(path: Path, skip_invalid: bool = False) -> RecordSet:
        calls.append(path)
        return real(path, skip_invalid=skip_invalid)

    monkeypatch.setattr("emafusion.stores.recordings.dataset.load_jsonl", counting)
    return calls


def test_a_hit_equals_a_fresh_parse_and_skips_parsing(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _jsonl(tmp_path / "mine.jsonl")
    fresh = jsonl_module.load_jsonl(path)
    calls = _count_parses(monkeypatch)
    first = load_dataset(recordings=path)
    assert len(calls) == 1 and len(_cache_files(cache_dir)) == 1
    second = load_dataset(recordings=path)
    assert len(calls) == 1  # from the cache
    _same(second, fresh)
    _same(first, fresh)
    # The records are the caller's own: changing one changes no later load.
    second.records[0].category = "changed"
    second.records[0].outcomes.clear()
    _same(load_dataset(recordings=path), fresh)
    # Validation still happens on use: a record made from the cache is a normal model.
    assert second.records[1].model_copy(update={"query": "x"}).query == "x"


def test_mmlu_pro_zips_round_trip(tmp_path: Path) -> None:
    files = []
    for model, pred in (("tiny", "B"), ("small", None)):
        rows = [
            {
                "question_id": q,
                "question": f"Q{q}?",
                "options": ["x", "y", "z"],
                "answer": "B",
                "category": "math",
                "pred": pred,
                "model_outputs": f"The answer is ({pred}).",
            }
            for q in range(5)
        ]
        path = tmp_path / f"model_outputs_{model}_5shots.zip"
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr(f"model_outputs_{model}_5shots.json", json.dumps([*rows, "note"]))
        files.append(path)
    fresh = load_mmlu_pro(files)
    assert rcache.cached_load("mmlu-pro", files, lambda: load_mmlu_pro(files)) is not None

    def no_parse() -> RecordSet:
        raise AssertionError("parsed again")

    _same(rcache.cached_load("mmlu-pro", files, no_parse), fresh)


def test_a_changed_source_file_invalidates_the_cache(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _jsonl(tmp_path / "mine.jsonl")
    calls = _count_parses(monkeypatch)
    load_dataset(recordings=path)
    stat = path.stat()
    # Same size, same mtime: only the content (its sha256) tells them apart.
    path.write_text(path.read_text().replace("question", "QUESTION"))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size
    changed = load_dataset(recordings=path)
    assert len(calls) == 2
    assert all(r.query.startswith("QUESTION") for r in changed.records)
    _same(changed, jsonl_module.load_jsonl(path))
    assert len(_cache_files(cache_dir)) == 1  # rebuilt in place, nothing left behind
    # Another option (skip_invalid) is another key.
    load_dataset(recordings=path, skip_invalid=True)
    assert len(calls) == 3


def _corrupt(cache_file: Path, data: bytes, *, fix_manifest: bool) -> None:
    cache_file.write_bytes(data)
    if fix_manifest:  # damage the manifest cannot see: the payload itself must be checked
        import hashlib

        manifest = json.loads(manifest_path(cache_file).read_text())
        manifest.update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
        manifest_path(cache_file).write_text(json.dumps(manifest))


class _Boom:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.parametrize(
    "damage",
    ["truncated", "flipped byte", "garbage, manifest matched", "foreign pickle", "other key"],
)
def test_a_damaged_cache_is_rebuilt_never_used(
    tmp_path: Path,
    cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    damage: str,
) -> None:
    path = _jsonl(tmp_path / "mine.jsonl")
    fresh = jsonl_module.load_jsonl(path)
    calls = _count_parses(monkeypatch)
    load_dataset(recordings=path)
    (cache_file,) = _cache_files(cache_dir)
    data = cache_file.read_bytes()
    if damage == "truncated":
        _corrupt(cache_file, data[: len(data) // 2], fix_manifest=False)
    elif damage == "flipped byte":
        _corrupt(
            cache_file, data[:-20] + bytes([data[-20] ^ 0xFF]) + data[-19:], fix_manifest=False
        )
    elif damage == "garbage, manifest matched":
        _corrupt(cache_file, data[:-200] + b"\0" * 200, fix_manifest=True)
    elif damage == "foreign pickle":
        header = data[: data.index(b"\n", len(rcache._MAGIC)) + 1]
        _corrupt(cache_file, header + pickle.dumps(_Boom()), fix_manifest=True)
        monkeypatch.setattr(os, "system", lambda *_: pytest.fail("a class was loaded"))
    else:  # a whole cache file of other inputs, under this name
        other = rcache.encode(fresh, "0" * 64)
        _corrupt(cache_file, other, fix_manifest=True)
    with caplog.at_level(logging.WARNING):
        again = load_dataset(recordings=path)
    _same(again, fresh)
    assert len(calls) == 2  # parsed again, not read from the damaged file
    notes = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(notes) == 1 and str(cache_file) in notes[0]
    # ... and the rebuilt cache is used from then on.
    _same(load_dataset(recordings=path), fresh)
    assert len(calls) == 2


def test_a_loader_error_is_raised_and_never_cached(tmp_path: Path, cache_dir: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(_record(0)) + "\n{not json\n")
    for _ in range(2):
        with pytest.raises(RecordingError, match=r"bad\.jsonl:2"):
            load_dataset(recordings=path)
    assert _cache_files(cache_dir) == []
    with pytest.raises(RecordingError, match="no such file"):
        load_dataset(recordings=tmp_path / "missing.jsonl")


def test_an_unwritable_cache_falls_back_to_parsing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache dir should be")
    monkeypatch.setenv("EMAFUSION_CACHE_DIR", str(blocker))
    path = _jsonl(tmp_path / "mine.jsonl")
    with caplog.at_level(logging.WARNING):
        loaded = load_dataset(recordings=path)
    _same(loaded, jsonl_module.load_jsonl(path))
    assert any("not written" in r.getMessage() for r in caplog.records)


def test_the_cache_can_be_turned_off(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(rcache.CACHE_ENV, "0")
    path = _jsonl(tmp_path / "mine.jsonl")
    _same(load_dataset(recordings=path), jsonl_module.load_jsonl(path))
    assert _cache_files(cache_dir) == []
