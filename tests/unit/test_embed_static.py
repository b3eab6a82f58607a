"""The static (distilled token table) path of all-MiniLM-L6-v2: opt-in, unit vectors that
depend on the text alone, its own id, a safe table cache, and neither torch nor onnxruntime at
run time.

The ONNX fp32 graph is exported and the table distilled once per session into a temporary
cache (~25 s + ~30 s on 2 cores); one test rebuilds a damaged table (~30 s more).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from emafusion.stores.embeddings import (
    EMBEDDER_ENV,
    EMBEDDER_KINDS,
    CachedEmbedder,
    MiniLMEmbedder,
    TextTooLongError,
    default_embedder,
    make_embedder,
)
from emafusion.stores.memory import OutcomeMemory, OutcomeMemoryError, OutcomeRecord
from emafusion.stores.onnx_embedder import OnnxMiniLMEmbedder
from emafusion.stores.onnx_export import cached_model_problem, manifest_path
from emafusion.stores.static_embedder import StaticMiniLMEmbedder
from emafusion.stores.static_table import STATIC_RECIPE, reduce_table
from tests.unit.embed_texts import TEXTS


@pytest.fixture(scope="session")
def static_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache dir holding the fp32 export and the default static table (built once)."""
    cache = tmp_path_factory.mktemp("static-cache")
    StaticMiniLMEmbedder(cache_dir=cache).prepare()
    return cache


@pytest.fixture(scope="session")
def static(static_cache: Path) -> StaticMiniLMEmbedder:
    return StaticMiniLMEmbedder(cache_dir=static_cache)


def copy_cache(source: Path, target: Path) -> None:
    shutil.copytree(source / "onnx", target / "onnx", ignore=shutil.ignore_patterns("*.lock"))


def run_python(code: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


# ------------------------------------------------------------------------------ vectors


def test_vectors_are_unit_float32_and_keep_meaning(static: StaticMiniLMEmbedder) -> None:
    vectors = static.embed(TEXTS)
    assert vectors.shape == (len(TEXTS), 256) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert np.isfinite(vectors).all()
    # The two sourdough questions are far closer to each other than to the bank.
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2
    # A text without word pieces gets the empty text's row, whatever its blanks.
    blank = static.embed(["", "   ", "\n\t"])
    assert np.array_equal(blank[0], blank[1]) and np.array_equal(blank[0], blank[2])
    assert np.array_equal(vectors[4], static.embed(["padded with spaces"])[0])


def test_vectors_are_deterministic_and_batch_independent(
    static: StaticMiniLMEmbedder, static_cache: Path
) -> None:
    target = "Which planet has the most moons?"
    alone = static.embed([target])[0].tobytes()
    others = ["x", "a much longer neighbour " * 30, "", "short one", "routing " * 300]
    for position in (0, 2, len(others)):
        batch = others[:position] + [target] + others[position:]
        assert static.embed(batch)[position].tobytes() == alone
    batch = static.embed(others)
    assert all(batch[i].tobytes() == static.embed([t])[0].tobytes() for i, t in enumerate(others))
    # A fresh instance (a fresh table load) gives the very same bytes.
    assert StaticMiniLMEmbedder(cache_dir=static_cache).embed([target])[0].tobytes() == alone


def test_truncation_matches_the_other_paths(
    static: StaticMiniLMEmbedder, static_cache: Path
) -> None:
    long_text = "routing " * 400
    assert static.count_tokens(["", "hello world", long_text]) == [2, 4, 402]
    assert static.count_tokens(TEXTS) == OnnxMiniLMEmbedder(cache_dir=static_cache).count_tokens(
        TEXTS
    )
    assert static.overlong(["short", long_text]) == [1]
    before = static.truncated_count
    vectors = static.embed(["short", long_text, long_text + "tail words"])
    assert static.last_truncated == (1, 2) and static.truncated_count == before + 2
    # Only the first 254 word pieces count, exactly.
    assert np.array_equal(vectors[1], vectors[2])
    assert np.array_equal(vectors[1], static.embed(["routing " * 254])[0])
    strict = StaticMiniLMEmbedder(truncation="error", max_seq_length=128, cache_dir=static_cache)
    with pytest.raises(TextTooLongError, match=r"indices \[1\].*truncation='truncate'"):
        strict.embed(["short", long_text])
    with pytest.raises(TypeError, match="wrap it in a list"):
        static.embed("hello")


# ------------------------------------------------------------------------------ ids


def test_id_differs_from_every_other_path(tmp_path: Path) -> None:
    static = StaticMiniLMEmbedder(cache_dir=tmp_path)
    others = {
        MiniLMEmbedder().id,
        OnnxMiniLMEmbedder("fp32", cache_dir=tmp_path).id,
        OnnxMiniLMEmbedder("int8", cache_dir=tmp_path).id,
    }
    assert static.id not in others
    assert static.id.startswith(MiniLMEmbedder().id + f"/static-{STATIC_RECIPE}-")
    assert StaticMiniLMEmbedder(dims=384, cache_dir=tmp_path).id != static.id
    assert StaticMiniLMEmbedder(max_seq_length=128, cache_dir=tmp_path).id != static.id
    assert static.dim == 256 and StaticMiniLMEmbedder(dims=384, cache_dir=tmp_path).dim == 384
    assert not (tmp_path / "onnx").exists()  # knowing the id builds nothing
    with pytest.raises(ValueError, match=r"dims must be in \[1, 384\]"):
        StaticMiniLMEmbedder(dims=512, cache_dir=tmp_path).embed(["hi"])


def test_vectors_never_mix_with_another_paths(
    static: StaticMiniLMEmbedder, static_cache: Path, tmp_path: Path
) -> None:
    onnx = OnnxMiniLMEmbedder("fp32", cache_dir=static_cache)
    CachedEmbedder(onnx, cache_dir=tmp_path).embed(["what is 2 + 2?"])
    cached = CachedEmbedder(static, cache_dir=tmp_path)
    vector = cached.embed(["what is 2 + 2?"])
    assert (cached.hits, cached.misses) == (0, 1)
    assert np.array_equal(vector, static.embed(["what is 2 + 2?"]))
    # A memory built on ONNX vectors refuses to load for the static embedder, and the other
    # way round (the dimension differs too, but the id is what is checked first).
    for built, used in ((onnx, static), (static, onnx)):
        memory = OutcomeMemory(built.dim, built.id)
        outcome = OutcomeRecord(model="m", score=1.0, source="recording", timestamp=1.0)
        memory.add("q", built.embed(["what is 2 + 2?"])[0], [outcome])
        memory.save(tmp_path / built.id.replace("/", "_"))
        with pytest.raises(OutcomeMemoryError, match="built with embedder"):
            OutcomeMemory.load(tmp_path / built.id.replace("/", "_"), used.id)


# ------------------------------------------------------------------------------ choosing it


def test_chosen_only_when_asked(static_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "static" in EMBEDDER_KINDS
    monkeypatch.setenv(EMBEDDER_ENV, "static")
    chosen = default_embedder(cache_dir=static_cache)
    assert isinstance(chosen, CachedEmbedder)
    assert isinstance(chosen.embedder, StaticMiniLMEmbedder)
    assert chosen.embedder.cache_dir == static_cache
    built = make_embedder("static", cache_dir=static_cache, max_seq_length=128)
    assert isinstance(built, StaticMiniLMEmbedder) and built.max_seq_length == 128
    # "auto" never picks it, even with its table built.
    monkeypatch.setenv(EMBEDDER_ENV, "auto")
    assert isinstance(default_embedder(cache=False, cache_dir=static_cache), OnnxMiniLMEmbedder)
    monkeypatch.setenv(EMBEDDER_ENV, "gpu-magic")
    with pytest.raises(ValueError, match=r"EMAFUSION_EMBEDDER='gpu-magic'.*static"):
        default_embedder()


def test_run_time_imports_neither_torch_nor_onnxruntime(
    static: StaticMiniLMEmbedder, static_cache: Path
) -> None:
    code = """
        import sys
        for name in ("torch", "onnxruntime", "sentence_transformers", "transformers"):
            sys.modules[name] = None  # this environment lacks them
        from emafusion.stores.embeddings import default_embedder
        embedder = default_embedder(kind="static", cache_dir=sys.argv[1], cache=False)
        print(embedder.embed(sys.argv[2:]).tobytes().hex())
    """
    out = run_python(code, str(static_cache), *TEXTS[:4])
    assert out.strip() == static.embed(TEXTS[:4]).tobytes().hex()  # another process, same bytes


# ------------------------------------------------------------------------------ the table


def test_cached_table_is_reused_not_rebuilt(
    static_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = StaticMiniLMEmbedder(cache_dir=static_cache).table_path
    stamp = path.stat().st_mtime_ns

    def no_distill(*_: object) -> np.ndarray:
        raise AssertionError("the cached table should have been used")

    monkeypatch.setattr("emafusion.stores.static_table.distill_token_vectors", no_distill)
    assert StaticMiniLMEmbedder(cache_dir=static_cache).embed(["x"]).shape == (1, 256)
    assert path.stat().st_mtime_ns == stamp
    manifest = json.loads(manifest_path(path).read_text())
    assert manifest["recipe"] == STATIC_RECIPE and manifest["dims"] == 256
    assert manifest["rows"] == 30523  # the vocabulary and the empty text


def test_damaged_table_is_rebuilt_once_by_racing_processes(
    static: StaticMiniLMEmbedder, static_cache: Path, tmp_path: Path
) -> None:
    """Rebuilt, not refused: the table is derived data and its recipe deterministic."""
    copy_cache(static_cache, tmp_path)
    path = StaticMiniLMEmbedder(cache_dir=tmp_path).table_path
    original = path.read_bytes()
    with path.open("r+b") as fh:  # flip bytes inside the vectors: it would still load
        fh.seek(len(original) // 2)
        fh.write(bytes(b ^ 0xFF for b in original[len(original) // 2 : len(original) // 2 + 64]))
    assert "damaged" in (cached_model_problem(path) or "")
    leftover = path.with_name(f".{path.name}.crashed.tmp")
    leftover.write_bytes(b"half a table from a crashed build")
    code = """
        import logging, sys
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        from emafusion.stores.static_embedder import StaticMiniLMEmbedder
        print(StaticMiniLMEmbedder(cache_dir=sys.argv[1]).embed(["race"]).tobytes().hex())
    """
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    assert outputs[0][0] == outputs[1][0] == static.embed(["race"]).tobytes().hex() + "\n"
    warnings = [err for _, err in outputs if f"rebuilding {path}" in err]
    assert len(warnings) == 1 and "damaged" in warnings[0]  # one built, the other waited
    assert path.read_bytes() == original  # the recipe is deterministic
    assert cached_model_problem(path) is None and not leftover.exists()


def test_unbuildable_table_is_a_clear_error(static_cache: Path, tmp_path: Path) -> None:
    copy_cache(static_cache, tmp_path)
    path = StaticMiniLMEmbedder(cache_dir=tmp_path).table_path
    manifest_path(path).unlink()  # a build that crashed before its manifest: never used
    assert "no manifest" in (cached_model_problem(path) or "")
    code = """
        import sys
        sys.modules["onnxruntime"] = None  # this environment cannot distill
        from emafusion.stores.static_embedder import StaticMiniLMEmbedder
        from emafusion.stores.onnx_export import OnnxModelError
        for dims in (256, 384):
            try:
                StaticMiniLMEmbedder(dims=dims, cache_dir=sys.argv[1]).embed(["hi"])
            except OnnxModelError as exc:
                print(exc)
    """
    unfinished, missing = run_python(code, str(tmp_path)).strip().splitlines()
    assert str(path) in unfinished and "no manifest" in unfinished
    assert str(path).replace("-d256", "-d384") in missing and "is not built yet" in missing
    for message in (unfinished, missing):
        assert "missing packages: onnxruntime" in message
        assert "pip install -e ." in message and "EMAFUSION_EMBEDDER=onnx" in message


def test_reduction_centres_and_keeps_the_strongest_axes() -> None:
    rng = np.random.default_rng(0)
    raw = rng.standard_normal((500, 6)) * [5.0, 3.0, 1.0, 0.5, 0.2, 0.1] + 40.0
    full, reduced = reduce_table(raw, 6), reduce_table(raw, 3)
    assert full.dtype == np.float32 and reduced.shape == (500, 3)
    assert np.allclose(full.mean(axis=0), 0.0, atol=1e-4)  # the common component is gone
    variances = full.var(axis=0)
    assert np.all(np.diff(variances) < 0)  # strongest axis first
    assert np.allclose(reduced, full[:, :3])
    # A full-width rotation keeps every inner product of the centred rows.
    centred = raw - raw.mean(axis=0)
    assert np.allclose(full @ full.T, centred @ centred.T, rtol=1e-4, atol=1e-2)
    assert np.array_equal(reduce_table(raw, 3), reduced)  # deterministic, signs included
