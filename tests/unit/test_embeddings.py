"""The hashing embedder and the on-disk embedding cache (no model is loaded)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from emafusion.stores.embeddings import (
    CACHE_DIR_ENV,
    CachedEmbedder,
    Embedder,
    EmbeddingCache,
    HashEmbedder,
    default_cache_dir,
    text_key,
)


class CountingEmbedder:
    """Wraps an embedder and records every text it is asked to embed."""

    def __init__(self, inner: Embedder, id_suffix: str = "") -> None:
        self.inner = inner
        self.id = inner.id + id_suffix
        self.dim = inner.dim
        self.seen: list[str] = []
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            self.seen.extend(texts)
        return self.inner.embed(texts)


def assert_unit_rows(vectors: np.ndarray, n: int, dim: int) -> None:
    assert vectors.shape == (n, dim)
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


# ------------------------------------------------------------------------------ fake embedder


def test_hash_embedder_is_deterministic_and_normalized() -> None:
    embedder = HashEmbedder(dim=32)
    assert isinstance(embedder, Embedder)
    texts = ["the cat sat on the mat", "", "!!!", "the cat sat on a mat", "stock prices fell"]
    vectors = embedder.embed(texts)
    assert_unit_rows(vectors, len(texts), 32)
    assert np.array_equal(vectors, HashEmbedder(dim=32).embed(texts))
    assert vectors[0] @ vectors[3] > vectors[0] @ vectors[4]
    assert embedder.embed([]).shape == (0, 32)
    assert HashEmbedder(dim=32, seed=1).id != embedder.id


def test_embed_rejects_a_bare_string() -> None:
    with pytest.raises(TypeError, match="wrap it in a list"):
        HashEmbedder().embed("hello")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        HashEmbedder().embed(["ok", 3])


# ------------------------------------------------------------------------------ cache


def test_cache_embeds_each_text_once_across_runs(tmp_path: Path) -> None:
    counting = CountingEmbedder(HashEmbedder(dim=16))
    first = CachedEmbedder(counting, cache_dir=tmp_path)
    a = first.embed(["alpha", "beta", "alpha", ""])
    assert counting.seen == ["alpha", "beta", ""]
    assert (first.hits, first.misses) == (1, 3)
    first.cache.close()

    # A new process-like run: fresh objects over the same directory.
    counting.seen.clear()
    second = CachedEmbedder(counting, EmbeddingCache(tmp_path))
    b = second.embed(["beta", "alpha", "gamma"])
    assert counting.seen == ["gamma"]
    assert np.array_equal(b[0], a[1]) and np.array_equal(b[1], a[0])
    assert_unit_rows(b, 3, 16)
    assert second.id == counting.id and second.dim == 16


def test_changed_embedder_id_never_reuses_vectors(tmp_path: Path) -> None:
    old = CountingEmbedder(HashEmbedder(dim=16))
    CachedEmbedder(old, cache_dir=tmp_path).embed(["alpha"])
    changed = CountingEmbedder(HashEmbedder(dim=16), id_suffix="/retrained")
    CachedEmbedder(changed, cache_dir=tmp_path).embed(["alpha"])
    assert changed.seen == ["alpha"]
    assert EmbeddingCache(tmp_path).count() == 2


def test_cache_rejects_stored_vectors_of_the_wrong_dimension(tmp_path: Path) -> None:
    embedder = CountingEmbedder(HashEmbedder(dim=16))
    cache = EmbeddingCache(tmp_path)
    cache.put_many(embedder.id, {text_key("alpha"): np.ones(8, dtype=np.float32)})
    with sqlite3.connect(cache.path) as conn:  # a row whose blob disagrees with its dim
        conn.execute(
            "INSERT INTO embeddings VALUES (?, ?, ?, ?)",
            (embedder.id, text_key("beta"), 16, b"\0" * 12),
        )
    vectors = CachedEmbedder(embedder, cache).embed(["alpha", "beta"])
    assert embedder.seen == ["alpha", "beta"]
    assert_unit_rows(vectors, 2, 16)
    stored = cache.get_many(embedder.id, 16, [text_key("alpha"), text_key("beta")])
    assert len(stored) == 2  # overwritten with valid rows


def test_default_cache_dir_honours_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "custom"))
    assert default_cache_dir() == tmp_path / "custom"
    assert EmbeddingCache().path.parent == tmp_path / "custom"
    monkeypatch.delenv(CACHE_DIR_ENV)
    assert "emafusion" in str(default_cache_dir())


def test_cache_shared_by_threads_and_processes(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        from emafusion.stores.embeddings import CachedEmbedder, HashEmbedder
        worker = int(sys.argv[2])
        texts = [f"text {i}" for i in range(worker * 50, worker * 50 + 100)]
        CachedEmbedder(HashEmbedder(dim=16), cache_dir=sys.argv[1]).embed(texts)
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path), str(w)]) for w in range(3)
    ]
    embedder = CachedEmbedder(HashEmbedder(dim=16), cache_dir=tmp_path)
    threads = [
        threading.Thread(target=embedder.embed, args=([f"thread {t} {i}" for i in range(50)],))
        for t in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    assert embedder.cache.count(embedder.id) == 200 + 200
    texts = [f"text {i}" for i in range(200)]
    assert np.array_equal(embedder.embed(texts), HashEmbedder(dim=16).embed(texts))
