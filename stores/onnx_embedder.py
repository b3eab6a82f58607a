"""all-MiniLM-L6-v2 on ONNX Runtime: the same vectors as sentence-transformers, without torch.

Run time needs only ``tokenizers`` (the package's tokenizer.json), ``onnxruntime`` and numpy;
the ONNX file is exported once from the shipped weights (`emafusion.stores.onnx_export`,
which does import torch) and cached.

The pipeline is the model's own, read from its modules.json: Transformer -> mean Pooling ->
Normalize. It is checked at load time, so a model directory with another pooling fails
loudly instead of being pooled wrongly.

Determinism: a text's vector is a function of that text alone. Every text runs as its own
batch of one (no padding, so no batch neighbour can change a bit), on one intra-op thread
(so no thread-count-dependent split of a reduction); several texts run in parallel on a
thread pool, each still single-threaded. Dynamic int8 quantization computes its activation
scales per run, which, for the same reason, means per text.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from emafusion.stores.embedding_base import (
    MINILM_MAX_SEQ_LENGTH,
    MiniLMBase,
    Truncation,
    check_texts,
    default_cache_dir,
    read_embedding_dim,
    too_long_error,
)
from emafusion.stores.onnx_export import (
    INPUT_NAMES,
    ONNX_RECIPE,
    OUTPUT_NAME,
    VARIANTS,
    OnnxModelError,
    OnnxVariant,
    ensure_onnx_model,
)

if TYPE_CHECKING:
    import onnxruntime
    from tokenizers import Tokenizer

logger = logging.getLogger(__name__)

_EXPECTED_MODULES = [
    "sentence_transformers.models.Transformer",
    "sentence_transformers.models.Pooling",
    "sentence_transformers.models.Normalize",
]


def check_mean_pooling_pipeline(model_dir: Path) -> None:
    """Fail unless the model is Transformer -> mean pooling -> Normalize, as implemented here."""
    modules_file = model_dir / "modules.json"
    try:
        modules = json.loads(modules_file.read_text())
        kinds = [m["type"] for m in sorted(modules, key=lambda m: m["idx"])]
        pooling_dir = next(m["path"] for m in modules if m["type"].endswith(".Pooling"))
        pooling = json.loads((model_dir / pooling_dir / "config.json").read_text())
    except (OSError, ValueError, KeyError, TypeError, StopIteration) as exc:
        raise OnnxModelError(
            f"{modules_file}: cannot read the sentence-transformers pipeline ({exc!r})"
        ) from exc
    modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode") and v)
    if kinds != _EXPECTED_MODULES or modes != ["pooling_mode_mean_tokens"]:
        raise OnnxModelError(
            f"{model_dir}: pipeline {kinds} with pooling {modes}; the ONNX embedder implements "
            f"only {_EXPECTED_MODULES} with mean pooling. Fix: use "
            f"EMAFUSION_EMBEDDER=sentence-transformers for this model."
        )


def load_tokenizer(model_dir: Path) -> Tokenizer:
    """The model's fast tokenizer, without the padding and truncation its file ships."""
    from tokenizers import Tokenizer

    tokenizer_file = model_dir / "tokenizer.json"
    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
    except Exception as exc:  # tokenizers raises a bare Exception
        raise OnnxModelError(
            f"{tokenizer_file}: cannot load the tokenizer ({exc}). Fix: point "
            f"model_path at a sentence-transformers model with a fast tokenizer."
        ) from exc
    # tokenizer.json ships padding and truncation to 128; lengths are ours to set.
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class ShippedMiniLM(MiniLMBase):
    """What the ONNX and static paths add to `MiniLMBase`: the cache dir they build into and
    the model's own tokenizer."""

    def __init__(
        self,
        max_seq_length: int,
        truncation: Truncation,
        model_path: str | Path | None,
        cache_dir: str | Path | None,
    ) -> None:
        super().__init__(max_seq_length, truncation, model_path)
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._tokenizer: Tokenizer | None = None

    @property
    def cache_dir(self) -> Path:
        return self._cache_dir if self._cache_dir is not None else default_cache_dir()

    def _load_tokenizer(self) -> Tokenizer:
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = load_tokenizer(self.model_path)
            return self._tokenizer


class OnnxMiniLMEmbedder(ShippedMiniLM):
    """all-MiniLM-L6-v2 (384-d) on ONNX Runtime, fp32 or dynamic int8.

    Same truncation contract as `MiniLMEmbedder`: a text is over-long when its word pieces
    plus [CLS]/[SEP] exceed ``max_seq_length`` (at most 256); ``truncation="truncate"`` keeps
    the first ``max_seq_length - 1`` pieces and [SEP] (what the Hugging Face tokenizer does)
    and counts them in `truncated_count` / `last_truncated`; ``truncation="error"`` raises
    `TextTooLongError` before anything is embedded.

    ``id`` is ``all-MiniLM-L6-v2@<weights>/max<n>/onnx-<variant>-<recipe>``: the same weights
    fingerprint as the sentence-transformers path, plus the runtime, so vectors of different
    paths never share a cache entry, a memory or a classifier. Knowing the id needs neither
    the ONNX file nor onnxruntime. The ONNX file is built on first use (or by `prepare`).
    ``threads`` is how many texts run at once (default: the CPUs this process may use); it
    does not change the vectors.
    """

    def __init__(
        self,
        variant: OnnxVariant = "fp32",
        *,
        max_seq_length: int = MINILM_MAX_SEQ_LENGTH,
        truncation: Truncation = "truncate",
        model_path: str | Path | None = None,
        cache_dir: str | Path | None = None,
        threads: int | None = None,
    ) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        super().__init__(max_seq_length, truncation, model_path, cache_dir)
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.variant: OnnxVariant = variant
        self.threads = threads if threads is not None else _default_threads()
        self._session: onnxruntime.InferenceSession | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._dim: int | None = None

    @property
    def id(self) -> str:
        return self._id_with(f"onnx-{self.variant}-{ONNX_RECIPE}")

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = read_embedding_dim(self.model_path)
        return self._dim

    @property
    def onnx_path(self) -> Path:
        """Where the ONNX file is (or will be) cached."""
        from emafusion.stores.onnx_export import onnx_model_path

        return onnx_model_path(self.model_path, self.cache_dir, self.variant)

    # --- loading -------------------------------------------------------------------------

    def prepare(self) -> Path:
        """Build (if needed) and load the ONNX model now; returns its path."""
        self._load_session()
        return self.onnx_path

    def _load_session(self) -> onnxruntime.InferenceSession:
        with self._lock:
            if self._session is None:
                check_mean_pooling_pipeline(self.model_path)
                path = ensure_onnx_model(self.model_path, self.cache_dir, self.variant)
                self._session = _open_session(path)
            return self._session

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="onnx-embed")
            return self._pool

    # --- tokens --------------------------------------------------------------------------

    def _encode(self, texts: list[str]) -> list[list[int]]:
        tokenizer = self._load_tokenizer()
        # sentence-transformers strips each text before tokenizing; so do we.
        stripped = [t.strip() for t in texts]
        if len(stripped) == 1:
            return [tokenizer.encode(stripped[0]).ids]
        return [e.ids for e in tokenizer.encode_batch(stripped)]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Word pieces per text as the model sees them, [CLS] and [SEP] included."""
        return [len(ids) for ids in self._encode(check_texts(texts))]

    # --- embedding -----------------------------------------------------------------------

    def _embed_one(self, ids: list[int]) -> np.ndarray:
        session = self._session
        assert session is not None
        input_ids = np.asarray([ids], dtype=np.int64)
        feeds = {
            INPUT_NAMES[0]: input_ids,
            INPUT_NAMES[1]: np.ones_like(input_ids),
            INPUT_NAMES[2]: np.zeros_like(input_ids),
        }
        (tokens,) = session.run([OUTPUT_NAME], feeds)
        # Mean over the text's own tokens (no padding exists), then unit length: the model's
        # Pooling + Normalize modules. float64 keeps the sum exact to float32 precision.
        pooled = tokens[0].astype(np.float64).mean(axis=0)
        norm = float(np.linalg.norm(pooled))
        return (pooled / max(norm, 1e-12)).astype(np.float32)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        items = check_texts(texts)
        if not items:
            return np.empty((0, self.dim), dtype=np.float32)
        encoded = self._encode(items)
        cut = [i for i, ids in enumerate(encoded) if len(ids) > self.max_seq_length]
        if cut and self.truncation == "error":
            raise too_long_error(cut, self.max_seq_length)
        for i in cut:
            # Keep the closing special token ([SEP]) the post-processor appended.
            encoded[i] = encoded[i][: self.max_seq_length - 1] + encoded[i][-1:]
        self._load_session()
        if len(encoded) == 1 or self.threads == 1:
            rows = [self._embed_one(ids) for ids in encoded]
        else:
            # Longest first: the pool's last tasks are short, so no worker idles at the end.
            order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
            done = self._executor().map(self._embed_one, [encoded[i] for i in order])
            rows = [np.empty(0, np.float32)] * len(encoded)
            for i, row in zip(order, done, strict=True):
                rows[i] = row
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
        return np.ascontiguousarray(np.vstack(rows), dtype=np.float32)

    def close(self) -> None:
        """Stop the worker threads (the session is freed with the object)."""
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def __repr__(self) -> str:
        return (
            f"OnnxMiniLMEmbedder(variant={self.variant!r}, max_seq_length={self.max_seq_length},"
            f" truncation={self.truncation!r}, threads={self.threads})"
        )


def _open_session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # One thread per run, always: results then cannot depend on how many cores there are.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.use_deterministic_compute = True
    options.log_severity_level = 3  # warnings about unused initializers are noise here
    # Idle workers sleep instead of spinning: the machine is shared.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise OnnxModelError(
            f"{path}: onnxruntime cannot load it ({exc}). Fix: delete it (and its .json "
            f"manifest) so it is rebuilt."
        ) from exc
