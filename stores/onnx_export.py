"""The ONNX files of all-MiniLM-L6-v2: exported once from the shipped weights, then cached.

Layout, beside the embedding cache (``default_cache_dir()``)::

    onnx/all-MiniLM-L6-v2-<weights fingerprint>-<recipe>-fp32.onnx       the exported graph
    onnx/all-MiniLM-L6-v2-<weights fingerprint>-<recipe>-fp32.onnx.json  its manifest (sha256)
    onnx/...-int8.onnx (+ .json)                                         dynamic int8 of it

How it stays safe:

* Exporting imports torch and transformers (once, offline, from the package's files); running
  never does (`emafusion.stores.onnx_embedder`).
* Every file is written atomically (`write_bytes_atomic`), the graph first and the manifest
  last, so an interrupted export leaves either nothing or a graph without a manifest, and a
  graph without a matching manifest is never used.
* Processes racing to build the same file take a file lock; the losers wait and then use
  the winner's file, so every process of a machine runs the very same bytes.
* A cached file whose sha256 no longer matches its manifest (damaged, truncated, replaced) is
  rebuilt, with a warning naming it: the file is derived data and the recipe is
  deterministic, so rebuilding loses nothing. Where it cannot be rebuilt (no torch), loading
  fails with an error that names the file and the fix.
* Those three are the one mechanism of every cached derived file
  (`emafusion.stores.cached_file`: `build_cached_file`, `cached_file_problem`).
* The export is checked against torch on probe inputs before it is published.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from emafusion.stores.cached_file import MANIFEST_FORMAT as MANIFEST_FORMAT
from emafusion.stores.cached_file import build_cached_file, cached_file_problem
from emafusion.stores.cached_file import manifest_path as manifest_path
from emafusion.stores.embedding_base import MINILM_NAME, force_offline, model_fingerprint

logger = logging.getLogger(__name__)

OnnxVariant = Literal["fp32", "int8"]
VARIANTS: tuple[OnnxVariant, ...] = ("fp32", "int8")
# Part of every file name and embedder id: bump it whenever the export or the quantization
# recipe changes, so vectors of an older recipe are never mixed with the new ones.
ONNX_RECIPE = "r1"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "token_embeddings"
# The export must reproduce torch's token embeddings; 3e-6 is typical, 1e-4 is a real bug.
EXPORT_TOLERANCE = 1e-4
LOCK_TIMEOUT_S = 900.0  # an export takes ~30 s on 2 cores; waiting longer means a stuck peer

_EXPORT_PACKAGES = ("torch", "transformers", "onnx", "onnxscript")
_QUANTIZE_PACKAGES = ("onnx", "onnxruntime")


class OnnxModelError(RuntimeError):
    """The ONNX model cannot be built or used; the message names the file and the fix."""


def onnx_model_path(model_dir: Path, cache_dir: Path, variant: OnnxVariant) -> Path:
    if variant not in VARIANTS:
        raise ValueError(f"ONNX variant must be one of {VARIANTS}, got {variant!r}")
    fingerprint = model_fingerprint(model_dir)[:16]
    name = f"{MINILM_NAME}-{fingerprint}-{ONNX_RECIPE}-{variant}.onnx"
    return Path(cache_dir) / "onnx" / name


def missing_packages(variant: OnnxVariant) -> list[str]:
    """Packages this process lacks to build ``variant`` from nothing (found, not imported)."""
    needed = _EXPORT_PACKAGES + (_QUANTIZE_PACKAGES if variant == "int8" else ())
    return [name for name in dict.fromkeys(needed) if not importable(name)]


def importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken install, or a module without a spec
        return False


# --------------------------------------------------------------------------------------------
# Checking a cached file
# --------------------------------------------------------------------------------------------

# The manifest check is the one of every cached derived file (`emafusion.stores.cached_file`).
cached_model_problem = cached_file_problem


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------


def ensure_onnx_model(model_dir: Path, cache_dir: Path, variant: OnnxVariant) -> Path:
    """The path of a whole cached ONNX file for ``variant``, building it first if needed."""
    path = onnx_model_path(model_dir, cache_dir, variant)
    problem = cached_model_problem(path)
    if problem is None:
        return path
    missing = missing_packages(variant)
    if (
        variant == "int8"
        and cached_model_problem(onnx_model_path(model_dir, cache_dir, "fp32")) is None
    ):
        # Quantizing needs only the fp32 graph, not torch.
        missing = [name for name in _QUANTIZE_PACKAGES if not importable(name)]
    if missing:
        state = "is not built yet" if problem == "missing" else f"cannot be used: {problem}"
        raise OnnxModelError(
            f"{path} {state}, and this environment cannot build it (missing packages: "
            f"{', '.join(missing)}). Fix: install them (`pip install -e .` installs all), or "
            f"use EMAFUSION_EMBEDDER=sentence-transformers."
        )

    def build() -> tuple[bytes, dict[str, Any]]:
        if variant == "fp32":
            data = export_fp32(model_dir)
        else:
            data = quantize_int8(ensure_onnx_model(model_dir, cache_dir, "fp32"))
        return data, {"variant": variant, "recipe": ONNX_RECIPE, "versions": _versions()}

    return build_model_file(path, model_dir, build, "building", "an fp32 export takes ~30 s")


def build_model_file(
    path: Path,
    model_dir: Path,
    build: Callable[[], tuple[bytes, dict[str, Any]]],
    verb: str,
    why: str,
) -> Path:
    """A file derived from the model, built once per cache dir under a lock
    (`build_cached_file`); its manifest also names the model it came from."""
    fields = {"source": str(model_dir), "source_fingerprint": model_fingerprint(model_dir)}

    def build_with_source() -> tuple[bytes, dict[str, Any]]:
        data, own = build()
        return data, {**own, **fields}

    return build_cached_file(path, build_with_source, verb, why, lock_timeout_s=LOCK_TIMEOUT_S)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "onnx", "onnxscript", "onnxruntime"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def export_fp32(model_dir: Path) -> bytes:
    """The model's token embeddings as an ONNX graph, checked against torch."""
    force_offline()
    import torch
    from transformers import AutoModel

    # Eager attention: the graph exported from torch's SDPA attention path mishandles the
    # attention mask (vectors come out unrelated to torch's); the eager path exports exactly.
    model = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()

    class TokenEmbeddings(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            out = self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            return out.last_hidden_state

    wrapper = TokenEmbeddings(model).eval()
    # Two rows of which one is padded, so neither axis nor the mask is traced as a constant.
    example = _probe_inputs(np.random.default_rng(0), [16, 11], pad_to=16)
    batch = torch.export.Dim("batch")
    seq = torch.export.Dim("seq", max=int(model.config.max_position_embeddings))
    dynamic = {name: {0: batch, 1: seq} for name in INPUT_NAMES}
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), _quiet_exporter_logs():
        program = torch.onnx.export(
            wrapper,
            tuple(torch.from_numpy(example[name]) for name in INPUT_NAMES),
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_shapes=dynamic,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    if program is None:
        raise OnnxModelError("torch.onnx.export returned no program; the exporter changed")
    data: bytes = program.model_proto.SerializeToString()
    _check_against_torch(data, wrapper)
    return data


@contextlib.contextmanager
def _quiet_exporter_logs() -> Iterator[None]:
    """The exporter's optimizer logs every rewrite at INFO; an app logging at INFO drowns."""
    names = ("onnxscript", "onnx_ir", "torch.onnx")
    levels = {name: logging.getLogger(name).level for name in names}
    try:
        for name in names:
            logging.getLogger(name).setLevel(logging.WARNING)
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _probe_inputs(rng: np.random.Generator, lengths: list[int], pad_to: int) -> dict[str, Any]:
    ids = np.zeros((len(lengths), pad_to), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(1000, 29000, size=n)
        ids[row, 0], ids[row, n - 1] = 101, 102  # [CLS] ... [SEP]
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def _check_against_torch(data: bytes, wrapper: Any) -> None:
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    for lengths, pad_to in (([5], 5), ([40, 7, 23], 40), ([256], 256)):
        feeds = _probe_inputs(rng, lengths, pad_to)
        (got,) = session.run([OUTPUT_NAME], feeds)
        with torch.no_grad():
            want = wrapper(*(torch.from_numpy(feeds[n]) for n in INPUT_NAMES)).numpy()
        valid = feeds["attention_mask"].astype(bool)
        error = float(np.max(np.abs(got[valid] - want[valid])))
        if not error <= EXPORT_TOLERANCE:
            raise OnnxModelError(
                f"the exported graph differs from torch by {error:.2e} (> {EXPORT_TOLERANCE}) "
                f"on probe lengths {lengths}; nothing was cached. Report it with the versions "
                f"{_versions()}."
            )


def quantize_int8(fp32_path: Path) -> bytes:
    """Dynamic int8 quantization of the MatMul weights, per output channel.

    Per channel and MatMul only: per-tensor scales, or quantizing the embedding lookup too,
    moved vectors much further from fp32 (cosine down to 0.956 on short queries, against 0.993).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(
        prefix=f".{fp32_path.name.replace('fp32', 'int8')}.work-", dir=fp32_path.parent
    ) as work:
        out = Path(work) / "int8.onnx"
        quantize_dynamic(
            fp32_path,
            out,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul"],
        )
        return out.read_bytes()
