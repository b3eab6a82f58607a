"""An `Estimator` as the files of a generation, and back (format versions 1 and 2).

Version 2 stores the ground-truth and judged tables apart (``truth_*``, ``judged_*``), the
label and predicted category of each row, and the running totals per tier. Version 1 (one
outcome per cell) is read as: ``live_judged`` cells judged, the rest ground truth, and each
stored category a label (memories were built from recordings' labels).

Running totals are restored verbatim (not re-summed in another order), so a loaded memory
predicts bit-identically; re-summing only cross-checks them.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from .estimator import JUDGED, TIERS, TRUTH, Estimator
from .generations import ARRAYS_FILE, FORMAT_NAME, FORMAT_VERSION, INDEX_FILE, META_FILE
from .records import SOURCES, MemorySettings, OutcomeMemoryError
from .tables import FIELDS, METRICS

_JUDGED_CODE = SOURCES.index("live_judged")


def encode(est: Estimator, extra_meta: dict[str, Any]) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The files and meta of a generation holding `est` (a consistent snapshot)."""
    with est.lock:
        n, m = est.n, len(est.models)
        groups = len(est.categories) + 1
        index_bytes = faiss.serialize_index(est.index).data
        arrays: dict[str, np.ndarray] = {
            "row_label": est.row_label[:n].copy(),
            "row_predicted": est.row_predicted[:n].copy(),
            "total_count": est.total_count[:, :, :groups, :m].copy(),
            "total_sum": est.total_sum[:, :, :groups, :m].copy(),
        }
        arrays |= {f"truth_{k}": v for k, v in est.truth.block(n, m).items()}
        if est.judged_active:
            arrays |= {f"judged_{k}": v for k, v in est.judged.block(n, m).items()}
        meta = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "embedder_id": est.embedder_id,
            "dim": est.dim,
            "index_kind": est.settings.index_kind,
            "settings": est.settings.to_dict(),
            "n_rows": n,
            "query_ids": list(est.ids),
            "models": list(est.models),
            "categories": list(est.categories),
            "sources": list(SOURCES),
            "judged": est.judged_active,
            "saved_at": time.time(),
            **extra_meta,
        }
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return {INDEX_FILE: bytes(index_bytes), ARRAYS_FILE: buffer.getvalue()}, meta


def decode(
    meta: dict[str, Any], blobs: dict[str, bytes], where: Path, settings: MemorySettings | None
) -> Estimator:
    """An `Estimator` from a generation's files; OutcomeMemoryError names what is wrong."""
    saved = MemorySettings.from_dict(meta["settings"])
    if settings is not None and settings.index_kind != saved.index_kind:
        raise OutcomeMemoryError(
            f"settings.index_kind={settings.index_kind!r} but the memory in {where.parent} "
            f"has a {saved.index_kind!r} index; keep index_kind={saved.index_kind!r}"
        )
    est = Estimator(int(meta["dim"]), str(meta["embedder_id"]), settings or saved)
    index = faiss.deserialize_index(np.frombuffer(blobs[INDEX_FILE], dtype=np.uint8))
    n = int(meta["n_rows"])
    expected_type = faiss.IndexFlatIP if saved.index_kind == "flat" else faiss.IndexHNSWFlat
    if (
        not isinstance(index, expected_type)
        or index.d != est.dim
        or index.ntotal != n
        or index.metric_type != faiss.METRIC_INNER_PRODUCT
    ):
        raise OutcomeMemoryError(
            f"{where / INDEX_FILE} holds a {type(index).__name__} with d={index.d}, "
            f"{index.ntotal} vectors; meta.json expects a {saved.index_kind} "
            f"inner-product index with d={est.dim} and {n} vectors. The save is damaged"
        )
    with np.load(io.BytesIO(blobs[ARRAYS_FILE]), allow_pickle=False) as arrays:
        data = {name: arrays[name] for name in arrays.files}
    ids, models = list(meta["query_ids"]), list(meta["models"])
    if list(meta.get("sources", SOURCES)) != list(SOURCES) or len(ids) != n:
        raise OutcomeMemoryError(f"{where / META_FILE} is inconsistent; the save is damaged")
    groups = len(meta["categories"]) + 1
    version = int(meta.get("format_version", 1))
    if version == 1:
        data = _upgrade_v1(data, n, len(models), groups, where)
    shape = (n, len(models))
    totals_shape = (TIERS, METRICS, groups, len(models))
    expected: dict[str, tuple[int, ...]] = {"row_label": (n,), "row_predicted": (n,)}
    expected |= {"total_count": totals_shape, "total_sum": totals_shape}
    expected |= {f"truth_{name}": shape for name in FIELDS}
    if meta.get("judged", False):
        expected |= {f"judged_{name}": shape for name in FIELDS}
    for name, wanted in expected.items():
        found = data[name].shape if name in data else "nothing"
        if found != wanted:
            raise OutcomeMemoryError(
                f"{where / ARRAYS_FILE}: {name} has shape {found}, expected {wanted}; "
                "the save is damaged"
            )
    with est.lock:
        est.index = index
        est.ids = ids
        est.row_of = {query_id: row for row, query_id in enumerate(ids)}
        est.models = models
        est.col_of = {model: col for col, model in enumerate(models)}
        est.categories = list(meta["categories"])
        est.cat_of = {c: code for code, c in enumerate(est.categories)}
        est.n = n
        est.row_label = data["row_label"].astype(np.int32)
        est.row_predicted = data["row_predicted"].astype(np.int32)
        est.truth.load_block({k: data[f"truth_{k}"] for k in FIELDS})
        est.recount_row_truth()
        if "judged_score" in data:
            est.judged.load_block({k: data[f"judged_{k}"] for k in FIELDS})
            est.judged_active = True
        est.total_count = data["total_count"].astype(np.int64)
        est.total_sum = data["total_sum"].astype(np.float64)
        if "recompute_totals" in data:
            est.total_count, est.total_sum = est.recomputed_totals()
        elif not est.totals_agree():
            raise OutcomeMemoryError(
                f"{where / ARRAYS_FILE}: per-model totals disagree with the stored outcomes; "
                "the save is damaged"
            )
        if isinstance(index, faiss.IndexHNSW):
            index.hnsw.efSearch = est.settings.hnsw_ef_search
    return est


def _upgrade_v1(
    data: dict[str, np.ndarray], n: int, m: int, groups: int, where: Path
) -> dict[str, np.ndarray]:
    """Version-1 arrays in the version-2 layout (see the module docstring)."""
    shape = (n, m)
    wanted: dict[str, tuple[int, ...]] = {"row_category": (n,)}
    wanted |= {"total_count": (METRICS, groups, m)}
    wanted |= {"total_sum": (METRICS, groups, m)}
    wanted |= {name: shape for name in FIELDS}
    for name, size in wanted.items():
        found = data[name].shape if name in data else "nothing"
        if found != size:
            raise OutcomeMemoryError(
                f"{where / ARRAYS_FILE}: {name} has shape {found}, expected {size}; "
                "the save is damaged"
            )
    judged = data["source"] == _JUDGED_CODE
    out: dict[str, np.ndarray] = {
        "row_label": data["row_category"],
        "row_predicted": np.full(n, -1, dtype=np.int32),
    }
    for name in FIELDS:
        fill = -1 if name == "source" else np.nan
        out[f"truth_{name}"] = np.where(judged, fill, data[name]).astype(data[name].dtype)
        if judged.any():
            out[f"judged_{name}"] = np.where(judged, data[name], fill).astype(data[name].dtype)
    count = np.zeros((TIERS, METRICS, groups, m), dtype=np.int64)
    total = np.zeros((TIERS, METRICS, groups, m))
    count[TRUTH], total[TRUTH] = data["total_count"], data["total_sum"]
    out["total_count"], out["total_sum"] = count, total
    if judged.any():
        # The old totals mixed both kinds; they are re-summed per kind.
        count[JUDGED] = 0
        out["recompute_totals"] = np.ones(1)
    return out
