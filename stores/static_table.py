"""The static (model2vec-style) token table of all-MiniLM-L6-v2: distilled once, then cached.

A static embedding replaces the transformer at query time by a lookup: every vocabulary
token gets one vector, and a text's vector is the mean of its tokens' vectors
(`emafusion.stores.static_embedder`). The table is distilled from the shipped weights, offline:

1. each token ``t`` alone, as the model sees a one-token text (``[CLS] t [SEP]``), runs
   through the ONNX fp32 graph (`emafusion.stores.onnx_export`); its vector is the model's
   mean pooling of the three outputs (before the final Normalize): the sentence embedding of
   that token. One extra row is the empty text (``[CLS] [SEP]``), used for texts without
   word pieces;
2. the rows are centred on their mean: every MiniLM output shares a large common direction,
   and averaging token vectors would otherwise make all texts look alike. Subtracting it is
   the frequency-free part of SIF ("remove the common component"); no corpus statistics, no
   per-dataset tuning;
3. they are rotated onto their principal axes (eigenvectors of the covariance, in float64,
   each axis' sign fixed) and the ``dims`` strongest kept; with ``dims`` = 384 the rotation
   changes no cosine.

Layout, beside the ONNX files (``<cache dir>/onnx/``)::

    all-MiniLM-L6-v2-<weights>-<onnx recipe>-static-<recipe>-d<dims>.npy       float32 table
    all-MiniLM-L6-v2-<weights>-<onnx recipe>-static-<recipe>-d<dims>.npy.json  its manifest

Safety is the ONNX files' (same manifest check, `cached_model_problem`): written atomically,
table first and manifest last; a table whose size or sha256 differs from its manifest is
rebuilt with a warning; processes racing to build it take a file lock and the losers use the
winner's file. Building needs onnxruntime (and, when the fp32 graph is not cached yet, torch
to export it); using a built table needs neither.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from emafusion.stores.embedding_base import MINILM_NAME, model_fingerprint, read_embedding_dim
from emafusion.stores.onnx_export import (
    INPUT_NAMES,
    ONNX_RECIPE,
    OUTPUT_NAME,
    OnnxModelError,
    build_model_file,
    cached_model_problem,
    ensure_onnx_model,
    importable,
    manifest_path,
    missing_packages,
    onnx_model_path,
)

if TYPE_CHECKING:
    from tokenizers import Tokenizer

logger = logging.getLogger(__name__)

# Part of every table's file name and of the embedder id: bump it whenever the distillation
# recipe changes, so vectors of an older table never mix with the new ones.
STATIC_RECIPE = "r1"
DEFAULT_STATIC_DIMS = 256
# Token sequences per ONNX run while distilling. All have the same length (3), so there is
# no padding and a row's output does not depend on its neighbours.
DISTILL_BATCH = 512


class StaticTableError(OnnxModelError):
    """The static table cannot be built or used; the message names the file and the fix."""


def static_table_path(model_dir: Path, cache_dir: Path, dims: int) -> Path:
    fingerprint = model_fingerprint(model_dir)[:16]
    name = f"{MINILM_NAME}-{fingerprint}-{ONNX_RECIPE}-static-{STATIC_RECIPE}-d{dims}.npy"
    return Path(cache_dir) / "onnx" / name


def check_dims(dims: int, model_dir: Path) -> None:
    width = read_embedding_dim(model_dir)
    if not 1 <= dims <= width:
        raise ValueError(f"dims must be in [1, {width}] (the model's width), got {dims}")


def load_static_table(path: Path) -> np.ndarray:
    """The table at ``path`` (already checked against its manifest) as a float32 array."""
    try:
        table = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise StaticTableError(
            f"{path}: cannot read the static table ({exc}). Fix: delete it and its .json "
            f"manifest so it is rebuilt."
        ) from exc
    if table.dtype != np.float32 or table.ndim != 2:
        raise StaticTableError(
            f"{path}: expected a 2-d float32 table, found {table.dtype} {table.shape}. Fix: "
            f"delete it and its .json manifest so it is rebuilt."
        )
    return table


def ensure_static_table(model_dir: Path, cache_dir: Path, dims: int, tokenizer: Tokenizer) -> Path:
    """The path of a whole cached table, distilling it first if needed (once per cache dir)."""
    check_dims(dims, model_dir)
    path = static_table_path(model_dir, cache_dir, dims)
    problem = cached_model_problem(path)
    if problem is None:
        return path
    missing = _missing_for_build(model_dir, cache_dir)
    if missing:
        state = "is not built yet" if problem == "missing" else f"cannot be used: {problem}"
        raise StaticTableError(
            f"{path} {state}, and this environment cannot distill it (missing packages: "
            f"{', '.join(missing)}). Fix: install them (`pip install -e .` installs all) or "
            f"copy a built table and its .json manifest here from another machine, or use "
            f"EMAFUSION_EMBEDDER=onnx."
        )
    # The fp32 graph is the teacher: built (or found) before the table's lock is taken.
    fp32 = ensure_onnx_model(model_dir, cache_dir, "fp32")

    def build() -> tuple[bytes, dict[str, Any]]:
        table = reduce_table(distill_token_vectors(fp32, tokenizer), dims)
        buffer = io.BytesIO()
        np.save(buffer, table, allow_pickle=False)
        return buffer.getvalue(), {
            "kind": "static",
            "recipe": STATIC_RECIPE,
            "onnx_recipe": ONNX_RECIPE,
            "dims": dims,
            "rows": int(table.shape[0]),
            "distilled_from": json.loads(manifest_path(fp32).read_text())["sha256"],
        }

    why = "one ONNX run per vocabulary token"
    return build_model_file(path, model_dir, build, "distilling", why)


def _missing_for_build(model_dir: Path, cache_dir: Path) -> list[str]:
    missing = [] if importable("onnxruntime") else ["onnxruntime"]
    if cached_model_problem(onnx_model_path(model_dir, cache_dir, "fp32")) is not None:
        missing += [name for name in missing_packages("fp32") if name not in missing]
    return missing


def wrap_ids(tokenizer: Tokenizer) -> tuple[list[int], list[int]]:
    """The special ids the model puts before and after a text's word pieces."""
    around = tokenizer.encode("").ids
    if len(around) != 2:
        raise StaticTableError(
            f"the tokenizer wraps a text in {around} special ids; the static table expects "
            f"one before and one after ([CLS] ... [SEP]). Fix: use EMAFUSION_EMBEDDER=onnx "
            f"for this model."
        )
    return around[:1], around[1:]


def distill_token_vectors(fp32_path: Path, tokenizer: Tokenizer) -> np.ndarray:
    """Mean-pooled model output (float64) of each token alone; last row: the empty text."""
    import onnxruntime as ort

    before, after = wrap_ids(tokenizer)
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    options = ort.SessionOptions()
    # One thread: the build's bytes must not depend on the machine's core count, and the
    # machine is shared (idle workers would spin otherwise).
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.use_deterministic_compute = True
    options.log_severity_level = 3
    session = ort.InferenceSession(str(fp32_path), options, providers=["CPUExecutionProvider"])

    def pooled(ids: np.ndarray) -> np.ndarray:
        feeds = {
            INPUT_NAMES[0]: ids,
            INPUT_NAMES[1]: np.ones_like(ids),
            INPUT_NAMES[2]: np.zeros_like(ids),
        }
        (tokens,) = session.run([OUTPUT_NAME], feeds)
        return np.asarray(tokens, dtype=np.float64).mean(axis=1)

    rows = []
    for start in range(0, vocab, DISTILL_BATCH):
        token_ids = np.arange(start, min(start + DISTILL_BATCH, vocab), dtype=np.int64)
        ids = np.column_stack(
            [
                np.full_like(token_ids, before[0]),
                token_ids,
                np.full_like(token_ids, after[0]),
            ]
        )
        rows.append(pooled(ids))
    rows.append(pooled(np.asarray([before + after], dtype=np.int64)))
    return np.vstack(rows)


def reduce_table(raw: np.ndarray, dims: int) -> np.ndarray:
    """Centre the rows, rotate them onto their ``dims`` principal axes; float32."""
    raw = np.asarray(raw, dtype=np.float64)
    if not 1 <= dims <= raw.shape[1]:
        raise ValueError(f"dims must be in [1, {raw.shape[1]}], got {dims}")
    centred = raw - raw.mean(axis=0)
    # Eigenvectors of the (width x width) covariance, strongest first: cheaper and more
    # reproducible than an SVD of the whole table.
    values, vectors = np.linalg.eigh(centred.T @ centred)
    axes = vectors[:, np.argsort(values)[::-1][:dims]]
    # An eigenvector's sign is arbitrary; fix it so that its largest loading is positive.
    signs = np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(dims)])
    axes = axes * np.where(signs == 0, 1.0, signs)
    return np.ascontiguousarray(centred @ axes, dtype=np.float32)
