"""A persistent, process-safe embedding cache and the embedder wrapper that uses it.

`EmbeddingCache` stores vectors in SQLite keyed by (embedder id, sha256 of the text);
`CachedEmbedder` wraps any embedder with it so each text is embedded once across runs.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from emafusion.stores.embedding_base import Embedder, check_texts, default_cache_dir, text_key

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    embedder_id TEXT NOT NULL,
    text_sha256 TEXT NOT NULL,
    dim INTEGER NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (embedder_id, text_sha256)
) WITHOUT ROWID
"""
_SQL_CHUNK = 400  # stay well under SQLite's bound-parameter limit


class EmbeddingCache:
    """Vectors on disk in SQLite, keyed by (embedder id, sha256 of the text).

    SQLite in WAL mode gives atomic commits and lets several processes read and write the
    same file; a changed embedder id simply misses. Rows whose stored dimension or byte length
    does not match what the caller expects are treated as misses and get overwritten.
    """

    FILENAME = "embeddings.sqlite3"

    def __init__(self, cache_dir: str | Path | None = None, *, timeout_s: float = 30.0) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.timeout_s = timeout_s
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self.cache_dir / self.FILENAME

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(
                    self.path,
                    timeout=self.timeout_s,
                    check_same_thread=False,
                    isolation_level=None,
                )
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute(_SCHEMA)
                self._conn = conn
            yield self._conn

    def get_many(self, embedder_id: str, dim: int, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """Stored vectors for the given text keys; missing or invalid rows are left out."""
        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(keys))
        with self._connection() as conn:
            for start in range(0, len(unique), _SQL_CHUNK):
                chunk = unique[start : start + _SQL_CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(
                    "SELECT text_sha256, dim, vector FROM embeddings "
                    f"WHERE embedder_id = ? AND text_sha256 IN ({marks})",
                    (embedder_id, *chunk),
                ).fetchall()
                for key, stored_dim, blob in rows:
                    vector = _decode_vector(stored_dim, blob, dim)
                    if vector is None:
                        logger.warning(
                            "ignoring corrupt cached embedding %s for %s (dim %s)",
                            key,
                            embedder_id,
                            stored_dim,
                        )
                        continue
                    found[key] = vector
        return found

    def put_many(self, embedder_id: str, vectors: Mapping[str, np.ndarray]) -> None:
        """Store vectors (text key -> 1-d float32 array) in one transaction."""
        rows = []
        for key, vector in vectors.items():
            arr = np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)
            rows.append((embedder_id, key, int(arr.shape[0]), arr.tobytes()))
        if not rows:
            return
        with self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "INSERT OR REPLACE INTO embeddings (embedder_id, text_sha256, dim, vector)"
                    " VALUES (?, ?, ?, ?)",
                    rows,
                )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def count(self, embedder_id: str | None = None) -> int:
        with self._connection() as conn:
            if embedder_id is None:
                row = conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()
            else:
                row = conn.execute(
                    "SELECT COUNT(*) FROM embeddings WHERE embedder_id = ?", (embedder_id,)
                ).fetchone()
        return int(row[0])

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _decode_vector(stored_dim: int, blob: bytes, expected_dim: int) -> np.ndarray | None:
    if stored_dim != expected_dim or len(blob) != 4 * expected_dim:
        return None
    vector = np.frombuffer(blob, dtype=np.float32).copy()
    if not np.all(np.isfinite(vector)):
        return None
    return vector


class CachedEmbedder:
    """Any `Embedder` plus an `EmbeddingCache`: each distinct text is embedded once.

    Keeps the wrapped embedder's ``id`` (the vectors are the same). Duplicate texts within a
    call are embedded once; all misses go to the wrapped embedder in a single call, so its
    truncation counters (``embedder.truncated_count``) only see the misses.
    """

    def __init__(
        self,
        embedder: Embedder,
        cache: EmbeddingCache | None = None,
        *,
        cache_dir: str | Path | None = None,
    ) -> None:
        if cache is not None and cache_dir is not None:
            raise ValueError("pass either cache or cache_dir, not both")
        self.embedder = embedder
        self.cache = cache if cache is not None else EmbeddingCache(cache_dir)
        self.hits = 0
        self.misses = 0
        self._stats_lock = threading.Lock()

    @property
    def id(self) -> str:
        return self.embedder.id

    @property
    def dim(self) -> int:
        return self.embedder.dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        items = check_texts(texts)
        dim = self.dim
        keys = [text_key(t) for t in items]
        found = self.cache.get_many(self.id, dim, keys)
        missing: dict[str, str] = {}
        for key, text in zip(keys, items, strict=True):
            if key not in found:
                missing.setdefault(key, text)
        if missing:
            fresh = self.embedder.embed(list(missing.values()))
            _check_embedder_output(fresh, len(missing), dim, self.id)
            computed = dict(zip(missing.keys(), fresh, strict=True))
            self.cache.put_many(self.id, computed)
            found.update(computed)
        with self._stats_lock:
            self.misses += len(missing)
            self.hits += len(items) - len(missing)
        out = np.empty((len(items), dim), dtype=np.float32)
        for row, key in enumerate(keys):
            out[row] = found[key]
        return out


def _check_embedder_output(vectors: np.ndarray, n: int, dim: int, embedder_id: str) -> None:
    if vectors.shape != (n, dim):
        raise ValueError(
            f"embedder {embedder_id} returned shape {vectors.shape}, expected {(n, dim)}"
        )
