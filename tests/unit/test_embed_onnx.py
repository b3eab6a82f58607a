"""The ONNX Runtime path for all-MiniLM-L6-v2: same vectors, same truncation, own ids,
a safe model-file cache, bit-identical vectors whatever the batch, and no torch at run time.

The real model is exported once per session into a temporary cache (~25 s on 2 cores);
everything else reuses that file.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from emafusion.stores.embeddings import (
    EMBEDDER_ENV,
    CachedEmbedder,
    MiniLMEmbedder,
    TextTooLongError,
    default_embedder,
)
from emafusion.stores.onnx_embedder import OnnxMiniLMEmbedder
from emafusion.stores.onnx_export import (
    OnnxModelError,
    cached_model_problem,
    ensure_onnx_model,
    manifest_path,
)
from tests.unit.embed_texts import TEXTS

HEAVY = ("torch", "sentence_transformers", "transformers")


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache dir holding the fp32 export and its int8 quantization (built once)."""
    cache = tmp_path_factory.mktemp("onnx-cache")
    for variant in ("fp32", "int8"):
        OnnxMiniLMEmbedder(variant, cache_dir=cache).prepare()
    return cache


@pytest.fixture(scope="session")
def fp32(onnx_cache: Path) -> OnnxMiniLMEmbedder:
    return OnnxMiniLMEmbedder("fp32", cache_dir=onnx_cache)


@pytest.fixture(scope="session")
def int8(onnx_cache: Path) -> OnnxMiniLMEmbedder:
    return OnnxMiniLMEmbedder("int8", cache_dir=onnx_cache)


@pytest.fixture(scope="session")
def st_vectors() -> np.ndarray:
    return MiniLMEmbedder(batch_size=4).embed(TEXTS)


def copy_cache(source: Path, target: Path, variants: tuple[str, ...]) -> None:
    (target / "onnx").mkdir(parents=True)
    for path in (source / "onnx").iterdir():
        if any(
            path.name.endswith(f"-{v}.onnx") or path.name.endswith(f"-{v}.onnx.json")
            for v in variants
        ):
            shutil.copy2(path, target / "onnx" / path.name)


def run_python(code: str, *args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


# ------------------------------------------------------------------------------ quality


def test_fp32_gives_the_sentence_transformers_vectors(
    fp32: OnnxMiniLMEmbedder, st_vectors: np.ndarray
) -> None:
    vectors = fp32.embed(TEXTS)
    assert vectors.shape == (len(TEXTS), 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    cosines = np.sum(vectors * st_vectors, axis=1)
    assert cosines.min() > 0.999, cosines
    assert np.abs(vectors - st_vectors).max() < 1e-3


def test_int8_stays_close_to_fp32(
    int8: OnnxMiniLMEmbedder, fp32: OnnxMiniLMEmbedder, st_vectors: np.ndarray
) -> None:
    vectors = int8.embed(TEXTS)
    cosines = np.sum(vectors * st_vectors, axis=1)
    assert cosines.min() > 0.97, cosines
    # It must still rank meanings as fp32 does: the two sourdough questions are closest.
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3
    assert not np.array_equal(vectors, fp32.embed(TEXTS))  # it really is another model


# ------------------------------------------------------------------------------ truncation


def test_truncation_semantics_match_sentence_transformers(fp32: OnnxMiniLMEmbedder) -> None:
    long_text = "routing " * 400
    assert fp32.count_tokens(["", "hello world", long_text]) == [2, 4, 402]
    assert fp32.count_tokens(TEXTS) == MiniLMEmbedder().count_tokens(TEXTS)
    assert fp32.overlong(["short", long_text]) == [1]
    before = fp32.truncated_count
    vectors = fp32.embed(["short", long_text, long_text + "tail words"])
    assert fp32.last_truncated == (1, 2)
    assert fp32.truncated_count == before + 2
    # Only the first 254 word pieces (plus [CLS] and [SEP]) count, exactly.
    assert np.array_equal(vectors[1], vectors[2])
    assert np.array_equal(vectors[1], fp32.embed(["routing " * 254])[0])
    strict = OnnxMiniLMEmbedder(truncation="error", max_seq_length=128, cache_dir=fp32.cache_dir)
    with pytest.raises(TextTooLongError, match=r"indices \[1\].*truncation='truncate'"):
        strict.embed(["short", long_text])
    assert strict.truncated_count == 0
    with pytest.raises(ValueError, match="max_seq_length"):
        OnnxMiniLMEmbedder(max_seq_length=512)
    with pytest.raises(TypeError, match="wrap it in a list"):
        fp32.embed("hello")


# ------------------------------------------------------------------------------ ids


def test_each_path_has_its_own_id(tmp_path: Path) -> None:
    st = MiniLMEmbedder()
    onnx32 = OnnxMiniLMEmbedder("fp32", cache_dir=tmp_path)
    onnx8 = OnnxMiniLMEmbedder("int8", cache_dir=tmp_path)
    ids = {st.id, onnx32.id, onnx8.id}
    assert len(ids) == 3
    # All fingerprint the same weights; the ONNX ones add runtime, variant and recipe.
    assert onnx32.id.startswith(st.id + "/onnx-fp32-")
    assert onnx8.id.startswith(st.id + "/onnx-int8-")
    assert OnnxMiniLMEmbedder("fp32", max_seq_length=128, cache_dir=tmp_path).id != onnx32.id
    assert onnx32.dim == onnx8.dim == 384
    assert not (tmp_path / "onnx").exists()  # knowing the id builds nothing


def test_vectors_of_different_paths_never_share_cache_rows(
    fp32: OnnxMiniLMEmbedder, int8: OnnxMiniLMEmbedder, tmp_path: Path
) -> None:
    a = CachedEmbedder(fp32, cache_dir=tmp_path).embed(["what is 2 + 2?"])
    second = CachedEmbedder(int8, cache_dir=tmp_path)
    b = second.embed(["what is 2 + 2?"])
    assert (second.hits, second.misses) == (0, 1)
    assert not np.array_equal(a, b)
    again = CachedEmbedder(fp32, cache_dir=tmp_path)
    assert np.array_equal(again.embed(["what is 2 + 2?"]), a)
    assert (again.hits, again.misses) == (1, 0)


# ------------------------------------------------------------------------------ model file


def test_cached_model_file_is_reused_not_rebuilt(
    onnx_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = OnnxMiniLMEmbedder("fp32", cache_dir=onnx_cache).onnx_path
    stamp = path.stat().st_mtime_ns

    def no_export(*_: object) -> bytes:
        raise AssertionError("the cached file should have been used")

    monkeypatch.setattr("emafusion.stores.onnx_export.export_fp32", no_export)
    monkeypatch.setattr("emafusion.stores.onnx_export.quantize_int8", no_export)
    fresh = OnnxMiniLMEmbedder("int8", cache_dir=onnx_cache)
    assert fresh.prepare().is_file()
    assert OnnxMiniLMEmbedder("fp32", cache_dir=onnx_cache).embed(["x"]).shape == (1, 384)
    assert path.stat().st_mtime_ns == stamp


def test_damaged_or_unfinished_file_is_rebuilt(
    onnx_cache: Path, int8: OnnxMiniLMEmbedder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Rebuilt, not refused: the file is derived data, so rebuilding loses nothing."""
    copy_cache(onnx_cache, tmp_path, ("fp32", "int8"))
    fresh = OnnxMiniLMEmbedder("int8", cache_dir=tmp_path)
    path = fresh.onnx_path
    original = path.read_bytes()
    with path.open("r+b") as fh:  # flip bytes inside the weights: it would still load
        fh.seek(len(original) // 2)
        fh.write(bytes(b ^ 0xFF for b in original[len(original) // 2 : len(original) // 2 + 64]))
    problem = cached_model_problem(path)
    assert problem is not None and "damaged" in problem
    with caplog.at_level(logging.WARNING, logger="emafusion.stores.onnx_export"):
        vectors = fresh.embed(TEXTS[:3])
    assert f"rebuilding {path}" in caplog.text and "damaged" in caplog.text
    assert cached_model_problem(path) is None
    assert np.array_equal(vectors, int8.embed(TEXTS[:3]))

    # A crash between writing the graph and its manifest: the graph alone is never used.
    manifest_path(path).unlink()
    path.write_bytes(original[: len(original) // 3])
    assert "no manifest" in (cached_model_problem(path) or "")
    ensure_onnx_model(fresh.model_path, tmp_path, "int8")
    assert cached_model_problem(path) is None
    assert json.loads(manifest_path(path).read_text())["variant"] == "int8"


def test_damaged_file_without_torch_is_a_clear_error(onnx_cache: Path, tmp_path: Path) -> None:
    copy_cache(onnx_cache, tmp_path, ("fp32",))
    path = OnnxMiniLMEmbedder("fp32", cache_dir=tmp_path).onnx_path
    path.write_bytes(path.read_bytes()[:1000])  # truncated
    code = """
        import sys
        sys.modules["torch"] = None  # this environment has no torch
        from emafusion.stores.onnx_embedder import OnnxMiniLMEmbedder
        from emafusion.stores.onnx_export import OnnxModelError
        try:
            OnnxMiniLMEmbedder("fp32", cache_dir=sys.argv[1]).embed(["hi"])
        except OnnxModelError as exc:
            print(exc)
    """
    message = run_python(code, str(tmp_path))
    assert str(path) in message and "size 1000 bytes" in message
    assert "missing packages: torch" in message and "EMAFUSION_EMBEDDER" in message


def test_racing_processes_build_one_file(onnx_cache: Path, tmp_path: Path) -> None:
    copy_cache(onnx_cache, tmp_path, ("fp32",))
    path = OnnxMiniLMEmbedder("int8", cache_dir=tmp_path).onnx_path
    leftover = path.with_name(f".{path.name}.crashed.tmp")
    leftover.write_bytes(b"half a file from a crashed build")
    code = """
        import sys
        from emafusion.stores.onnx_embedder import OnnxMiniLMEmbedder
        vector = OnnxMiniLMEmbedder("int8", cache_dir=sys.argv[1]).embed(["race"])
        print(vector.tobytes().hex())
    """
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), str(tmp_path)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outputs[0] == outputs[1]
    assert cached_model_problem(path) is None
    assert not leftover.exists()
    assert sorted(p.name for p in path.parent.iterdir() if "int8" in p.name) == [
        path.name,
        path.name + ".json",
        path.name + ".lock",
    ]


# ------------------------------------------------------------------------------ determinism


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_vector_is_the_same_alone_or_in_any_batch(variant: str, onnx_cache: Path) -> None:
    serial = OnnxMiniLMEmbedder(variant, cache_dir=onnx_cache, threads=1)
    pooled = OnnxMiniLMEmbedder(variant, cache_dir=onnx_cache, threads=4)
    target = "Which planet has the most moons?"
    alone = serial.embed([target])[0].tobytes()
    others = ["x", "a much longer neighbour " * 30, "", "short one", "routing " * 300]
    for embedder in (serial, pooled):
        for position in (0, 2, len(others)):
            batch = others[:position] + [target] + others[position:]
            assert embedder.embed(batch)[position].tobytes() == alone
    # And the whole batch equals its texts embedded one by one.
    batch = pooled.embed(others)
    assert all(batch[i].tobytes() == serial.embed([t])[0].tobytes() for i, t in enumerate(others))


# ------------------------------------------------------------------------------ run time


def test_run_time_path_imports_no_torch_and_is_picked_by_default(
    onnx_cache: Path, fp32: OnnxMiniLMEmbedder, tmp_path: Path
) -> None:
    code = """
        import os, sys
        os.environ.pop("EMAFUSION_EMBEDDER", None)
        from emafusion.stores.embeddings import default_embedder
        from emafusion.stores.onnx_embedder import OnnxMiniLMEmbedder
        embedder = default_embedder(cache_dir=sys.argv[1], cache=False)
        assert isinstance(embedder, OnnxMiniLMEmbedder), embedder
        vectors = embedder.embed(sys.argv[2:])
        heavy = {"torch", "sentence_transformers", "transformers"} & set(sys.modules)
        assert not heavy, heavy
        print(vectors.tobytes().hex())
    """
    texts = TEXTS[:4]
    out = run_python(code, str(onnx_cache), *texts)
    # Another process, the same bytes.
    assert out.strip() == fp32.embed(texts).tobytes().hex()


def test_explicit_choice_by_argument_and_env(
    onnx_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(EMBEDDER_ENV, "sentence-transformers")
    assert isinstance(default_embedder(cache=False), MiniLMEmbedder)
    chosen = default_embedder(kind="onnx-int8", cache_dir=onnx_cache)
    assert isinstance(chosen, CachedEmbedder)
    assert isinstance(chosen.embedder, OnnxMiniLMEmbedder) and chosen.embedder.variant == "int8"
    assert chosen.embedder.cache_dir == onnx_cache
    monkeypatch.setenv(EMBEDDER_ENV, "onnx")
    onnx = default_embedder(cache=False, cache_dir=onnx_cache)
    assert isinstance(onnx, OnnxMiniLMEmbedder) and onnx.variant == "fp32"
    monkeypatch.setenv(EMBEDDER_ENV, "gpu-magic")
    with pytest.raises(ValueError, match=r"EMAFUSION_EMBEDDER='gpu-magic'.*onnx-int8"):
        default_embedder()
    with pytest.raises(ValueError, match="kind='bogus'"):
        default_embedder(kind="bogus")


def test_auto_falls_back_to_sentence_transformers(tmp_path: Path) -> None:
    code = """
        import os, sys, logging
        logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
        os.environ.pop("EMAFUSION_EMBEDDER", None)
        blocked = sys.argv[2]
        sys.modules[blocked] = None  # this environment lacks it
        from emafusion.stores.embeddings import MiniLMEmbedder, default_embedder
        embedder = default_embedder(cache_dir=sys.argv[1], cache=False)
        assert isinstance(embedder, MiniLMEmbedder), embedder
    """
    # No onnxruntime at all.
    assert "ONNX Runtime unavailable" in run_python(code, str(tmp_path), "onnxruntime")
    # onnxruntime, but no export yet and no torch to make one.
    out = run_python(code, str(tmp_path), "torch")
    assert "could not be built" in out and "missing packages: torch" in out


def test_unknown_pooling_is_refused(tmp_path: Path, fp32: OnnxMiniLMEmbedder) -> None:
    model = tmp_path / "model"
    shutil.copytree(fp32.model_path, model)
    pooling = json.loads((model / "1_Pooling" / "config.json").read_text())
    pooling.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    (model / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    embedder = OnnxMiniLMEmbedder(model_path=model, cache_dir=tmp_path / "cache")
    with pytest.raises(OnnxModelError, match="pooling_mode_cls_token.*sentence-transformers"):
        embedder.embed(["hi"])
