"""all-MiniLM-L6-v2 as a static embedding: a token-table lookup instead of the transformer.

Opt-in (``EMAFUSION_EMBEDDER=static``), never the default: a text's vector is the mean of
its word pieces' vectors from a table distilled once from the shipped weights
(`emafusion.stores.static_table`), so embedding a query costs a tokenization and a mean,
microseconds instead of the tens of milliseconds of a transformer run on a small CPU. The
price is quality: word order and context are lost. bench/embed_quality.py, against
sentence-transformers: MMLU-Pro AUROC of predicted success -0.009, category classifier
accuracy -0.128 (0.704 vs 0.832); RouterBench AUROC +0.026, accuracy -0.007 (285 queries,
noisy). bench/embed.py on 2 shared cores: batch-1 p50 0.4 ms (fp32 ONNX: tens of ms).

Run time needs only ``tokenizers`` and numpy: no torch, no onnxruntime (those only distill
the table, once per cache dir). A text's vector depends on that text alone (each is averaged
on its own, in float64), so it is bit-identical alone or in any batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from emafusion.stores.embedding_base import (
    MINILM_MAX_SEQ_LENGTH,
    SPECIAL_TOKENS,
    Truncation,
    check_texts,
    too_long_error,
)
from emafusion.stores.onnx_embedder import ShippedMiniLM, check_mean_pooling_pipeline
from emafusion.stores.onnx_export import ONNX_RECIPE
from emafusion.stores.static_table import (
    DEFAULT_STATIC_DIMS,
    STATIC_RECIPE,
    StaticTableError,
    check_dims,
    ensure_static_table,
    load_static_table,
    static_table_path,
)

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)


class StaticMiniLMEmbedder(ShippedMiniLM):
    """all-MiniLM-L6-v2 distilled into a static token table (``dims``-d, default 256).

    Same truncation contract as the other MiniLM paths: a text is over-long when its word
    pieces plus [CLS]/[SEP] exceed ``max_seq_length``; ``truncation="truncate"`` averages only
    the first ``max_seq_length - 2`` word pieces and counts the text in `truncated_count` /
    `last_truncated`; ``truncation="error"`` raises `TextTooLongError` first. A text without
    word pieces (empty, blank) gets the vector of the empty text, distilled with the table.

    ``id`` is ``all-MiniLM-L6-v2@<weights>/max<n>/static-<recipe>-<onnx recipe>-d<dims>``:
    other vectors than every other path's, so they never share a cache entry or a memory.
    Knowing the id builds nothing; the table is built on first use (or by `prepare`).
    """

    def __init__(
        self,
        *,
        dims: int = DEFAULT_STATIC_DIMS,
        max_seq_length: int = MINILM_MAX_SEQ_LENGTH,
        truncation: Truncation = "truncate",
        model_path: str | Path | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        super().__init__(max_seq_length, truncation, model_path, cache_dir)
        if dims < 1:  # the upper bound is the model's width, checked when the table loads
            raise ValueError(f"dims must be >= 1, got {dims}")
        self.dims = dims
        self._table: np.ndarray | None = None

    @property
    def id(self) -> str:
        return self._id_with(f"static-{STATIC_RECIPE}-{ONNX_RECIPE}-d{self.dims}")

    @property
    def dim(self) -> int:
        return self.dims

    @property
    def table_path(self) -> Path:
        """Where the distilled table is (or will be) cached."""
        return static_table_path(self.model_path, self.cache_dir, self.dims)

    # --- loading -------------------------------------------------------------------------

    def _load_table(self) -> np.ndarray:
        tokenizer = self._load_tokenizer()
        with self._lock:
            if self._table is None:
                check_dims(self.dims, self.model_path)
                check_mean_pooling_pipeline(self.model_path)
                path = ensure_static_table(self.model_path, self.cache_dir, self.dims, tokenizer)
                table = load_static_table(path)
                rows = tokenizer.get_vocab_size(with_added_tokens=True) + 1
                if table.shape != (rows, self.dims):
                    raise StaticTableError(
                        f"{path}: table of shape {table.shape}, expected {(rows, self.dims)} "
                        f"for this tokenizer. Fix: delete it and its .json manifest so it is "
                        f"rebuilt."
                    )
                self._table = table
            return self._table

    def prepare(self) -> Path:
        """Build (if needed) and load the table now; returns its path."""
        self._load_table()
        return self.table_path

    # --- tokens --------------------------------------------------------------------------

    def _pieces(self, texts: list[str]) -> list[list[int]]:
        """Word-piece ids per text, without the special tokens."""
        tokenizer = self._load_tokenizer()
        # sentence-transformers strips each text before tokenizing; so do the other paths.
        stripped = [t.strip() for t in texts]
        if len(stripped) == 1:
            return [tokenizer.encode(stripped[0], add_special_tokens=False).ids]
        return [e.ids for e in tokenizer.encode_batch(stripped, add_special_tokens=False)]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Word pieces per text as the model sees them, [CLS] and [SEP] included."""
        return [len(ids) + SPECIAL_TOKENS for ids in self._pieces(check_texts(texts))]

    # --- embedding -----------------------------------------------------------------------

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        items = check_texts(texts)
        if not items:
            return np.empty((0, self.dims), dtype=np.float32)
        pieces = self._pieces(items)
        limit = self.max_seq_length - SPECIAL_TOKENS
        cut = [i for i, ids in enumerate(pieces) if len(ids) > limit]
        if cut and self.truncation == "error":
            raise too_long_error(cut, self.max_seq_length)
        table = self._load_table()
        out = np.empty((len(items), self.dims), dtype=np.float32)
        for row, ids in enumerate(pieces):
            if ids:
                # float64: the mean of up to 254 rows stays exact to float32 precision.
                vector = table[ids[:limit]].astype(np.float64).mean(axis=0)
            else:
                vector = table[-1].astype(np.float64)  # the empty text's row
            norm = float(np.linalg.norm(vector))
            out[row] = vector / max(norm, 1e-12)
        with self._lock:
            self.truncated_count += len(cut)
            self.last_truncated = tuple(cut)
        if cut:
            logger.debug("truncated %d of %d texts to %d word pieces", len(cut), len(items), limit)
        return out

    def __repr__(self) -> str:
        return (
            f"StaticMiniLMEmbedder(dims={self.dims}, max_seq_length={self.max_seq_length},"
            f" truncation={self.truncation!r})"
        )
