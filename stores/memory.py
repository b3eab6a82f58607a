"""OutcomeMemory: the learned kNN router's memory of past queries and model outcomes.

Every stored query has an embedding (searchable with FAISS, inner product on unit vectors),
an optional category, and at most one `OutcomeRecord` per model that answered it. For a new
query the memory estimates each model's chance of success from the outcomes of the nearest
stored queries, shrunk toward a prior:

    p = (sum_i w_i * s_i + m * prior) / (sum_i w_i + m)

``w_i`` is a non-negative kernel of the similarity (optionally times a time decay), ``m`` the
shrinkage strength, and ``prior`` the model's mean score in the query's category (when that
category has enough records for the model), else its global mean, else a declared prior
(``MemorySettings.model_priors``), else ``MemorySettings.default_prior``. An exploration bonus
``c / sqrt(1 + sum_i w_i)`` is reported next to ``p`` (and folded into ``ucb``), never into it.
Time decay (``half_life_s``) scales the neighbour weights only; priors are plain means, kept as
running totals so neither `add` nor `predict` ever rescans the whole memory.

The memory learns online: `add` makes a query searchable at once (no rebuild), and adding
outcomes for a known query id updates that query instead of storing its vector twice.

Vectors must be unit length (the embedders return them so). A vector whose norm is off by
more than ``NORM_TOLERANCE`` is rejected, unless ``MemorySettings(normalize_inputs=True)``,
in which case it is normalized. Zero, non-finite or wrong-sized vectors are always rejected.

On disk (`save` / `load`) a memory directory holds generation subdirectories
(``gen-000007-1a2b3c4d/`` with ``index.faiss``, ``outcomes.npz``, ``meta.json``) and a small
``MANIFEST.json`` naming the current one. A save writes and fsyncs a complete new generation,
then atomically replaces the manifest, then deletes older generations; a crash at any point
leaves a loadable memory (the old one until the manifest is replaced, the new one after).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import re
import secrets
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import faiss
import numpy as np

from emafusion.stores.atomic import fsync_dir

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from .embeddings import Embedder

__all__ = [
    "FORMAT_VERSION",
    "NORM_TOLERANCE",
    "BatchPrediction",
    "Evidence",
    "MemorySettings",
    "ModelStats",
    "OutcomeMemory",
    "OutcomeMemoryError",
    "OutcomeRecord",
    "Prediction",
    "StoredQuery",
]

Source = Literal["recording", "live_judged", "user_feedback"]
IndexKind = Literal["flat", "hnsw"]
Weighting = Literal["power", "exp"]
PriorSource = Literal["category", "global", "declared", "default"]

SOURCES: tuple[Source, ...] = get_args(Source)
PRIOR_SOURCES: tuple[PriorSource, ...] = get_args(PriorSource)

FORMAT_NAME = "emafusion-outcome-memory"
FORMAT_VERSION = 1
MANIFEST_FILE = "MANIFEST.json"
INDEX_FILE = "index.faiss"
ARRAYS_FILE = "outcomes.npz"
META_FILE = "meta.json"
LOCK_FILE = ".lock"
_GENERATION = re.compile(r"^gen-(\d{6,})-[0-9a-f]{8}$")

NORM_TOLERANCE = 1e-3
# Running totals are kept per metric: index 0 score, 1 cost_usd, 2 latency_s.
_SCORE, _COST, _LATENCY = range(3)
_METRICS = 3
# Above this many outcomes in one add_many, re-summing the totals in one vectorized pass is
# cheaper than updating them outcome by outcome.
_BULK_OUTCOMES = 1024
_PREDICT_CHUNK = 2048  # queries per vectorized block: bounds the (B, k, models) temporaries


class OutcomeMemoryError(ValueError):
    """Bad input to, or a bad file for, an `OutcomeMemory`. The message names the fix."""


# --------------------------------------------------------------------------------------------
# Records and settings
# --------------------------------------------------------------------------------------------


def _finite_number(value: object, name: str, hint: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise OutcomeMemoryError(f"{name} must be a number, got {value!r}; {hint}")
    number = float(value)
    if not math.isfinite(number):
        raise OutcomeMemoryError(f"{name} must be finite, got {number}; {hint}")
    return number


@dataclass(frozen=True, slots=True, kw_only=True)
class OutcomeRecord:
    """How one model did on one query.

    ``score`` is in [0, 1] (1 = success). ``cost_usd`` and ``latency_s`` are non-negative or
    None when unknown (never NaN). ``timestamp`` is unix seconds (defaults to now).
    """

    model: str
    score: float
    source: Source
    cost_usd: float | None = None
    latency_s: float | None = None
    timestamp: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise OutcomeMemoryError(
                f"OutcomeRecord.model must be a non-empty str, got {self.model!r}"
            )
        where = f"OutcomeRecord(model={self.model!r})"
        score = _finite_number(self.score, f"{where}.score", "pass a score in [0, 1]")
        if not 0.0 <= score <= 1.0:
            raise OutcomeMemoryError(
                f"{where}.score must be in [0, 1], got {score}; rescale judge scores to [0, 1]"
            )
        object.__setattr__(self, "score", score)
        for name in ("cost_usd", "latency_s"):
            value = getattr(self, name)
            if value is None:
                continue
            hint = "use None when it is unknown"
            number = _finite_number(value, f"{where}.{name}", hint)
            if number < 0:
                raise OutcomeMemoryError(f"{where}.{name} must be >= 0, got {number}; {hint}")
            object.__setattr__(self, name, number)
        stamp = _finite_number(self.timestamp, f"{where}.timestamp", "pass unix seconds")
        if stamp < 0:
            raise OutcomeMemoryError(f"{where}.timestamp must be unix seconds >= 0, got {stamp}")
        object.__setattr__(self, "timestamp", stamp)
        if self.source not in SOURCES:
            raise OutcomeMemoryError(
                f"{where}.source must be one of {SOURCES}, got {self.source!r}"
            )


@dataclass(frozen=True, slots=True)
class StoredQuery:
    """One stored query: its id, category and each model's latest outcome on it."""

    query_id: str
    category: str | None
    outcomes: Mapping[str, OutcomeRecord]


@dataclass(frozen=True, kw_only=True)
class MemorySettings:
    """Tuning of an `OutcomeMemory`; saved with it.

    Neighbour weights: ``weighting="power"`` uses ``max(sim, 0) ** alpha``, ``"exp"`` uses
    ``exp((sim - 1) / temperature)``; neighbours below ``min_similarity`` weigh nothing.
    ``half_life_s`` (None = off) multiplies each outcome's weight by
    ``0.5 ** (age / half_life_s)``. ``shrinkage`` is ``m``, the prior's pseudo-count.
    A category prior needs ``min_category_count`` records of the model in that category.
    ``model_priors`` declares priors for models (e.g. from price tier or benchmarks), used
    when the memory has no record of them; others start at ``default_prior``.
    ``exploration`` is ``c`` in the bonus ``c / sqrt(1 + n_eff)``.
    ``index_kind="hnsw"`` trades exactness for speed on large memories; ``hnsw_m`` and
    ``hnsw_ef_construction`` are fixed when the index is built, ``hnsw_ef_search`` is used at
    each search (raised to at least k).
    """

    k: int = 20
    weighting: Weighting = "power"
    alpha: float = 3.0
    temperature: float = 0.05
    min_similarity: float = 0.0
    shrinkage: float = 2.0
    min_category_count: int = 5
    default_prior: float = 0.5
    model_priors: Mapping[str, float] = field(default_factory=dict)
    exploration: float = 0.2
    half_life_s: float | None = None
    index_kind: IndexKind = "flat"
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 64
    normalize_inputs: bool = False

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise OutcomeMemoryError(f"MemorySettings.{message}")

        need(isinstance(self.k, int) and self.k >= 1, f"k must be an int >= 1, got {self.k!r}")
        need(
            self.weighting in get_args(Weighting),
            f"weighting must be 'power' or 'exp', got {self.weighting!r}",
        )
        need(self.alpha > 0, f"alpha must be > 0, got {self.alpha}")
        need(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        need(
            -1.0 <= self.min_similarity <= 1.0,
            f"min_similarity must be in [-1, 1], got {self.min_similarity}",
        )
        need(self.shrinkage >= 0, f"shrinkage must be >= 0, got {self.shrinkage}")
        need(
            self.min_category_count >= 1,
            f"min_category_count must be >= 1, got {self.min_category_count}",
        )
        need(
            0.0 <= self.default_prior <= 1.0,
            f"default_prior must be in [0, 1], got {self.default_prior}",
        )
        priors = dict(self.model_priors)
        for model, prior in priors.items():
            need(
                isinstance(prior, int | float) and 0.0 <= prior <= 1.0,
                f"model_priors[{model!r}] must be in [0, 1], got {prior!r}",
            )
        object.__setattr__(self, "model_priors", {m: float(p) for m, p in priors.items()})
        need(self.exploration >= 0, f"exploration must be >= 0, got {self.exploration}")
        need(
            self.half_life_s is None or self.half_life_s > 0,
            f"half_life_s must be > 0 or None, got {self.half_life_s}",
        )
        need(
            self.index_kind in get_args(IndexKind),
            f"index_kind must be 'flat' or 'hnsw', got {self.index_kind!r}",
        )
        need(self.hnsw_m >= 2, f"hnsw_m must be >= 2, got {self.hnsw_m}")
        need(
            self.hnsw_ef_construction >= 1,
            f"hnsw_ef_construction must be >= 1, got {self.hnsw_ef_construction}",
        )
        need(self.hnsw_ef_search >= 1, f"hnsw_ef_search must be >= 1, got {self.hnsw_ef_search}")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["model_priors"] = dict(self.model_priors)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MemorySettings:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise OutcomeMemoryError(
                f"unknown MemorySettings fields {unknown}; the memory was saved by a newer "
                "emafusion, upgrade to load it"
            )
        return cls(**data)


# --------------------------------------------------------------------------------------------
# Predictions and statistics
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Evidence:
    """The neighbours that informed one model's prediction (those with a positive weight).

    ``weights`` are after the similarity kernel and time decay; ``n_eff`` is their sum, the
    similarity-weighted count of this model's outcomes near the query.
    """

    query_ids: tuple[str, ...]
    similarities: tuple[float, ...]
    weights: tuple[float, ...]
    scores: tuple[float, ...]
    n_eff: float


@dataclass(frozen=True, slots=True)
class Prediction:
    """A model's estimated chance of success on a query.

    ``p_success`` is the shrunk neighbour estimate; the exploration bonus is kept apart and
    only added in ``ucb`` (= ``optimistic``) = min(1, p_success + exploration_bonus).
    """

    model: str
    p_success: float
    exploration_bonus: float
    ucb: float
    prior: float
    prior_source: PriorSource
    expected_cost_usd: float | None
    evidence: Evidence

    @property
    def optimistic(self) -> float:
        return self.ucb

    @property
    def n_eff(self) -> float:
        return self.evidence.n_eff


@dataclass(frozen=True)
class BatchPrediction:
    """Array form of `OutcomeMemory.predict_batch`, for evaluations over many queries.

    Arrays of shape (queries, models) follow the order of ``models``; ``expected_cost_usd``
    is NaN where unknown and ``prior_source`` holds indices into `PRIOR_SOURCES`.
    ``rows``/``similarities`` (queries, k) are the neighbours found (row -1: none) and
    ``weights`` (queries, k, models) what each contributed per model.
    """

    models: tuple[str, ...]
    p_success: np.ndarray
    exploration_bonus: np.ndarray
    ucb: np.ndarray
    prior: np.ndarray
    prior_source: np.ndarray
    expected_cost_usd: np.ndarray
    n_eff: np.ndarray
    rows: np.ndarray
    similarities: np.ndarray
    weights: np.ndarray
    scores: np.ndarray


@dataclass(frozen=True, slots=True)
class ModelStats:
    model: str
    count: int
    mean_score: float
    cost_count: int
    mean_cost_usd: float | None
    mean_latency_s: float | None


def _safe_mean(total: np.ndarray, count: np.ndarray) -> np.ndarray:
    out = np.full(total.shape, np.nan)
    np.divide(total, count, out=out, where=count > 0)
    return out


# --------------------------------------------------------------------------------------------
# The memory
# --------------------------------------------------------------------------------------------


def _new_index(dim: int, settings: MemorySettings) -> faiss.Index:
    if settings.index_kind == "flat":
        return faiss.IndexFlatIP(dim)
    index = faiss.IndexHNSWFlat(dim, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = settings.hnsw_ef_construction
    index.hnsw.efSearch = settings.hnsw_ef_search
    return index


class OutcomeMemory:
    """kNN memory of query embeddings and per-model outcomes; see the module docstring.

    FAISS ids are row numbers: rows are only ever appended, so row i of the index is always
    the i-th stored query. All mutations and searches hold one re-entrant lock, which makes
    concurrent use from threads and asyncio tasks (via ``asyncio.to_thread``) safe.
    """

    def __init__(self, dim: int, embedder_id: str, settings: MemorySettings | None = None) -> None:
        if not isinstance(dim, int) or dim < 1:
            raise OutcomeMemoryError(f"dim must be a positive int, got {dim!r}")
        if not isinstance(embedder_id, str) or not embedder_id:
            raise OutcomeMemoryError(
                f"embedder_id must be a non-empty str (the Embedder.id), got {embedder_id!r}"
            )
        self.dim = dim
        self.embedder_id = embedder_id
        self._settings = settings if settings is not None else MemorySettings()
        self._lock = threading.RLock()
        self._index = _new_index(dim, self.settings)
        self._ids: list[str] = []
        self._row_of: dict[str, int] = {}
        self._models: list[str] = []
        self._col_of: dict[str, int] = {}
        self._categories: list[str] = []
        self._cat_of: dict[str, int] = {}
        self._n = 0
        self._row_cat = np.full(0, -1, dtype=np.int32)
        self._score = np.full((0, 0), np.nan)
        self._cost = np.full((0, 0), np.nan)
        self._latency = np.full((0, 0), np.nan)
        self._time = np.full((0, 0), np.nan)
        self._source = np.full((0, 0), -1, dtype=np.int8)
        # Running per-model totals, (metric, group, model); group 0 = all, 1 + c = category c.
        self._total_count = np.zeros((_METRICS, 1, 0), dtype=np.int64)
        self._total_sum = np.zeros((_METRICS, 1, 0))

    @classmethod
    def for_embedder(
        cls, embedder: Embedder, settings: MemorySettings | None = None
    ) -> OutcomeMemory:
        return cls(embedder.dim, embedder.id, settings)

    # ---------------------------------------------------------------- introspection

    def __len__(self) -> int:
        return self._n

    def __contains__(self, query_id: object) -> bool:
        return query_id in self._row_of

    @property
    def models(self) -> list[str]:
        """Every model with at least one stored outcome, in first-seen order."""
        with self._lock:
            return list(self._models)

    @property
    def categories(self) -> list[str]:
        with self._lock:
            return list(self._categories)

    @property
    def query_ids(self) -> list[str]:
        with self._lock:
            return list(self._ids)

    @property
    def settings(self) -> MemorySettings:
        """The settings in force (read-only: the index was built for them)."""
        return self._settings

    @property
    def index_kind(self) -> IndexKind:
        return self.settings.index_kind

    def get(self, query_id: str) -> StoredQuery | None:
        with self._lock:
            row = self._row_of.get(query_id)
            return None if row is None else self._stored_query(row)

    def records(self) -> list[StoredQuery]:
        """All stored queries in insertion order."""
        with self._lock:
            return [self._stored_query(row) for row in range(self._n)]

    def vector(self, query_id: str) -> np.ndarray:
        with self._lock:
            row = self._row_of.get(query_id)
            if row is None:
                raise KeyError(query_id)
            return np.asarray(self._index.reconstruct(row), dtype=np.float32)

    def _stored_query(self, row: int) -> StoredQuery:
        code = int(self._row_cat[row])
        outcomes = {}
        for col, model in enumerate(self._models):
            if not np.isnan(self._score[row, col]):
                outcomes[model] = self._record_at(row, col)
        category = self._categories[code] if code >= 0 else None
        return StoredQuery(self._ids[row], category, outcomes)

    def _record_at(self, row: int, col: int) -> OutcomeRecord:
        cost = self._cost[row, col]
        latency = self._latency[row, col]
        return OutcomeRecord(
            model=self._models[col],
            score=float(self._score[row, col]),
            source=SOURCES[int(self._source[row, col])],
            cost_usd=None if np.isnan(cost) else float(cost),
            latency_s=None if np.isnan(latency) else float(latency),
            timestamp=float(self._time[row, col]),
        )

    # ---------------------------------------------------------------- validation

    def _prepare_vectors(self, vectors: ArrayLike, *, what: str = "vector") -> np.ndarray:
        try:
            arr = np.array(vectors, dtype=np.float32, ndmin=2)
        except (TypeError, ValueError) as exc:
            raise OutcomeMemoryError(f"{what} must be numeric: {exc}") from exc
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            got = arr.shape[-1] if arr.ndim == 2 else arr.shape
            raise OutcomeMemoryError(
                f"{what} has dimension {got}, but this memory holds {self.dim}-d vectors of "
                f"embedder {self.embedder_id!r}; embed queries with that embedder"
            )
        finite = np.isfinite(arr).all(axis=1)
        if not finite.all():
            raise OutcomeMemoryError(
                f"{what} row {int(np.argmin(finite))} contains NaN or inf; check the embedder"
            )
        norms = np.linalg.norm(arr, axis=1)
        if (norms == 0).any():
            raise OutcomeMemoryError(
                f"{what} row {int(np.argmin(norms))} is all zeros and has no direction; "
                "check the embedder output"
            )
        off = np.abs(norms - 1.0) > NORM_TOLERANCE
        if off.any():
            if not self.settings.normalize_inputs:
                bad = int(np.argmax(off))
                raise OutcomeMemoryError(
                    f"{what} row {bad} has L2 norm {norms[bad]:.4f}, expected 1; pass "
                    "unit-length vectors (Embedder.embed returns them) or create the memory "
                    "with MemorySettings(normalize_inputs=True)"
                )
            arr[off] /= norms[off, None]
        return np.ascontiguousarray(arr)

    @staticmethod
    def _prepare_outcomes(
        outcomes: Iterable[OutcomeRecord | Mapping[str, Any]], query_id: str
    ) -> list[OutcomeRecord]:
        if isinstance(outcomes, OutcomeRecord | Mapping):
            raise OutcomeMemoryError(
                f"outcomes for query {query_id!r} must be a list of OutcomeRecord, "
                "got a single record; wrap it in a list"
            )
        records = []
        for item in outcomes:
            if isinstance(item, OutcomeRecord):
                records.append(item)
            elif isinstance(item, Mapping):
                try:
                    records.append(OutcomeRecord(**item))
                except TypeError as exc:
                    raise OutcomeMemoryError(
                        f"bad outcome for query {query_id!r}: {exc}; OutcomeRecord takes "
                        "model, score, source, cost_usd, latency_s, timestamp"
                    ) from exc
            else:
                raise OutcomeMemoryError(
                    f"outcomes for query {query_id!r} must be OutcomeRecord instances, "
                    f"got {type(item).__name__}"
                )
        return records

    @staticmethod
    def _check_query_id(query_id: object) -> str:
        if not isinstance(query_id, str) or not query_id:
            raise OutcomeMemoryError(f"query_id must be a non-empty str, got {query_id!r}")
        return query_id

    @staticmethod
    def _check_category(category: object) -> str | None:
        if category is None:
            return None
        if not isinstance(category, str) or not category:
            raise OutcomeMemoryError(f"category must be a non-empty str or None, got {category!r}")
        return category

    # ---------------------------------------------------------------- learning

    def add(
        self,
        query_id: str,
        vector: ArrayLike | None,
        outcomes: Iterable[OutcomeRecord | Mapping[str, Any]],
        category: str | None = None,
    ) -> bool:
        """Store a query's outcomes; it is searchable as soon as this returns.

        For a query id already stored, the outcomes are merged into it (its vector is kept,
        so ``vector`` may be None). Per (query, model) the outcome with the latest timestamp
        wins; ties go to the newly added one. A non-None ``category`` replaces the stored one.
        Returns True when the query id was new.
        """
        query_id = self._check_query_id(query_id)
        if vector is None:
            with self._lock:
                if query_id not in self._row_of:
                    raise OutcomeMemoryError(
                        f"query {query_id!r} is not in the memory yet; pass its vector"
                    )
                return self._apply([query_id], None, [outcomes], [category]) == 1
        matrix = self._prepare_vectors(vector, what="vector")
        return self.add_many([query_id], matrix, [outcomes], [category]) == 1

    def add_many(
        self,
        query_ids: Sequence[str],
        vectors: ArrayLike,
        outcomes: Sequence[Iterable[OutcomeRecord | Mapping[str, Any]]],
        categories: Sequence[str | None] | None = None,
    ) -> int:
        """Bulk `add` with one index insertion; all-or-nothing on bad input.

        Returns the number of new query ids.
        """
        if isinstance(query_ids, str):
            raise OutcomeMemoryError("query_ids must be a list of ids, not one str; use add()")
        matrix = self._prepare_vectors(vectors, what="vectors")
        return self._apply(list(query_ids), matrix, list(outcomes), categories)

    def _apply(
        self,
        query_ids: list[str],
        vectors: np.ndarray | None,
        outcomes: list[Iterable[OutcomeRecord | Mapping[str, Any]]],
        categories: Sequence[str | None] | None,
    ) -> int:
        n = len(query_ids)
        cats = [None] * n if categories is None else list(categories)
        if len(outcomes) != n or len(cats) != n or (vectors is not None and len(vectors) != n):
            raise OutcomeMemoryError(
                f"add_many got {n} query_ids, {len(outcomes)} outcome lists, "
                f"{len(cats)} categories and "
                f"{'no' if vectors is None else len(vectors)} vectors; pass one of each per query"
            )
        ids = [self._check_query_id(q) for q in query_ids]
        cats = [self._check_category(c) for c in cats]
        records = [self._prepare_outcomes(o, q) for o, q in zip(outcomes, ids, strict=True)]
        with self._lock:
            new_positions: dict[str, int] = {}
            for pos, query_id in enumerate(ids):
                if query_id not in self._row_of and query_id not in new_positions:
                    new_positions[query_id] = pos
            if new_positions:
                if vectors is None:
                    raise OutcomeMemoryError(f"queries {list(new_positions)} need vectors")
                self._append_rows(list(new_positions), vectors[list(new_positions.values())])
            bulk = sum(len(recs) for recs in records) >= _BULK_OUTCOMES
            for query_id, category, recs in zip(ids, cats, records, strict=True):
                row = self._row_of[query_id]
                if category is not None:
                    self._set_category(row, self._category_code(category), account=not bulk)
                for record in recs:
                    self._store_outcome(row, record, account=not bulk)
            if bulk:
                self._total_count, self._total_sum = self._recomputed_totals()
            return len(new_positions)

    def _append_rows(self, query_ids: list[str], vectors: np.ndarray) -> None:
        # The index goes first: if FAISS fails nothing else has changed yet.
        self._index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        start = self._n
        self._reserve(start + len(query_ids), len(self._models))
        for offset, query_id in enumerate(query_ids):
            self._ids.append(query_id)
            self._row_of[query_id] = start + offset
        self._n = start + len(query_ids)

    def _store_outcome(self, row: int, record: OutcomeRecord, *, account: bool) -> None:
        col = self._col_of.get(record.model)
        if col is None:
            col = len(self._models)
            self._reserve(self._n, col + 1)
            self._models.append(record.model)
            self._col_of[record.model] = col
        elif not np.isnan(self._score[row, col]):
            if self._time[row, col] > record.timestamp:
                return  # an older outcome (e.g. a replayed recording) must not hide a newer one
            if account:
                self._account(row, col, -1)
        self._score[row, col] = record.score
        self._cost[row, col] = np.nan if record.cost_usd is None else record.cost_usd
        self._latency[row, col] = np.nan if record.latency_s is None else record.latency_s
        self._time[row, col] = record.timestamp
        self._source[row, col] = SOURCES.index(record.source)
        if account:
            self._account(row, col, +1)

    def _account(self, row: int, col: int, sign: int) -> None:
        """Add (sign=1) or remove (sign=-1) one stored outcome from the running totals."""
        code = int(self._row_cat[row])
        groups = (0,) if code < 0 else (0, code + 1)
        values = (self._score[row, col], self._cost[row, col], self._latency[row, col])
        for metric, value in enumerate(values):
            if np.isnan(value):
                continue
            for group in groups:
                self._total_count[metric, group, col] += sign
                self._total_sum[metric, group, col] += sign * value

    def _set_category(self, row: int, code: int, *, account: bool) -> None:
        if self._row_cat[row] == code:
            return
        if not account:
            self._row_cat[row] = code
            return
        present = np.flatnonzero(~np.isnan(self._score[row, : len(self._models)]))
        for col in present:
            self._account(row, int(col), -1)
        self._row_cat[row] = code
        for col in present:
            self._account(row, int(col), +1)

    def _category_code(self, category: str) -> int:
        code = self._cat_of.get(category)
        if code is None:
            code = len(self._categories)
            self._reserve_totals(code + 2, self._total_count.shape[2])
            self._categories.append(category)
            self._cat_of[category] = code
        return code

    def _reserve(self, rows: int, cols: int) -> None:
        """Grow the outcome arrays geometrically so appends stay amortized O(1)."""
        self._reserve_totals(self._total_count.shape[1], cols)
        cap_rows, cap_cols = self._score.shape
        if rows <= cap_rows and cols <= cap_cols:
            return
        new_rows = max(rows, cap_rows * 2 if rows > cap_rows else cap_rows, 64)
        new_cols = max(cols, cap_cols * 2 if cols > cap_cols else cap_cols, 4)

        def grown(old: np.ndarray, fill: float) -> np.ndarray:
            new = np.full((new_rows, new_cols), fill, dtype=old.dtype)
            new[: old.shape[0], : old.shape[1]] = old
            return new

        self._score = grown(self._score, np.nan)
        self._cost = grown(self._cost, np.nan)
        self._latency = grown(self._latency, np.nan)
        self._time = grown(self._time, np.nan)
        self._source = grown(self._source, -1)
        row_cat = np.full(new_rows, -1, dtype=np.int32)
        row_cat[: self._row_cat.shape[0]] = self._row_cat
        self._row_cat = row_cat

    def _reserve_totals(self, groups: int, cols: int) -> None:
        _, cap_groups, cap_cols = self._total_count.shape
        if groups <= cap_groups and cols <= cap_cols:
            return
        shape = (
            _METRICS,
            max(groups, 2 * cap_groups if groups > cap_groups else cap_groups),
            max(cols, cap_cols),
        )
        count = np.zeros(shape, dtype=np.int64)
        total = np.zeros(shape)
        count[:, :cap_groups, :cap_cols] = self._total_count
        total[:, :cap_groups, :cap_cols] = self._total_sum
        self._total_count, self._total_sum = count, total

    # ---------------------------------------------------------------- statistics

    def _recomputed_totals(self) -> tuple[np.ndarray, np.ndarray]:
        """Totals rebuilt from the outcome arrays (to cross-check the running ones on load)."""
        n, m = self._n, len(self._models)
        n_groups = len(self._categories) + 1
        # One flat bincount per metric: cell (row, col) lands in bin (category, col).
        groups = self._row_cat[:n].astype(np.intp) + 1
        bins = (groups[:, None] * m + np.arange(m)).ravel()
        count = np.zeros((_METRICS, n_groups, m), dtype=np.int64)
        total = np.zeros((_METRICS, n_groups, m))
        for metric, values in enumerate((self._score, self._cost, self._latency)):
            block = values[:n, :m]
            present = ~np.isnan(block)
            filled = np.where(present, block, 0.0)
            size = n_groups * m
            count[metric] = np.bincount(bins, present.ravel(), size).reshape(n_groups, m)
            total[metric] = np.bincount(bins, filled.ravel(), size).reshape(n_groups, m)
        # Group 0 is everything: the bins above only hold the uncategorised rows there.
        count[:, 0] = count.sum(axis=1)
        total[:, 0] = total.sum(axis=1)
        return count, total

    def model_stats(self, category: str | None = None) -> dict[str, ModelStats]:
        """Count, mean score, mean cost and latency per model (optionally in one category).

        Models without outcomes in that scope are left out.
        """
        with self._lock:
            models = list(self._models)
            group = 0
            if category is not None:
                code = self._cat_of.get(category)
                if code is None:
                    return {}
                group = code + 1
            counts = self._total_count[:, group, : len(models)].copy()
            means = _safe_mean(self._total_sum[:, group, : len(models)], counts)
        out = {}
        for col, model in enumerate(models):
            if counts[_SCORE, col] == 0:
                continue
            out[model] = ModelStats(
                model=model,
                count=int(counts[_SCORE, col]),
                mean_score=float(means[_SCORE, col]),
                cost_count=int(counts[_COST, col]),
                mean_cost_usd=None if counts[_COST, col] == 0 else float(means[_COST, col]),
                mean_latency_s=(
                    None if counts[_LATENCY, col] == 0 else float(means[_LATENCY, col])
                ),
            )
        return out

    # ---------------------------------------------------------------- prediction

    def predict(
        self,
        query_vector: ArrayLike,
        models: Sequence[str] | None = None,
        k: int | None = None,
        category: str | None = None,
        *,
        now: float | None = None,
        exclude_id: str | None = None,
    ) -> dict[str, Prediction]:
        """Per-model `Prediction` for one query (``models=None``: every known model).

        ``exclude_id`` leaves that stored query out of the neighbours (leave-one-out scoring
        of a query that is already in the memory). ``now`` (unix seconds) anchors time decay.
        """
        vectors = self._prepare_vectors(query_vector, what="query_vector")
        if len(vectors) != 1:
            raise OutcomeMemoryError(
                f"predict takes one query vector, got {len(vectors)}; use predict_batch"
            )
        return self.predict_batch(
            vectors,
            models,
            k,
            [category],
            now=now,
            exclude_ids=None if exclude_id is None else [exclude_id],
        )[0]

    def predict_batch(
        self,
        vectors: ArrayLike,
        models: Sequence[str] | None = None,
        k: int | None = None,
        categories: Sequence[str | None] | None = None,
        *,
        now: float | None = None,
        exclude_ids: Sequence[str | None] | None = None,
    ) -> list[dict[str, Prediction]]:
        """`predict` for many queries with one FAISS search per block of queries."""
        batch = self.predict_arrays(
            vectors, models, k, categories, now=now, exclude_ids=exclude_ids
        )
        with self._lock:
            ids = self._ids  # append-only: rows seen by the search stay valid
        return [self._predictions_for(batch, b, ids) for b in range(batch.p_success.shape[0])]

    def predict_arrays(
        self,
        vectors: ArrayLike,
        models: Sequence[str] | None = None,
        k: int | None = None,
        categories: Sequence[str | None] | None = None,
        *,
        now: float | None = None,
        exclude_ids: Sequence[str | None] | None = None,
    ) -> BatchPrediction:
        """`predict_batch` as arrays, without building per-model objects."""
        queries = self._prepare_vectors(vectors, what="vectors")
        n_queries = len(queries)
        k = self.settings.k if k is None else k
        if not isinstance(k, int) or k < 1:
            raise OutcomeMemoryError(f"k must be an int >= 1, got {k!r}")
        names = tuple(self.models if models is None else self._check_models(models))
        cats: list[str | None] = [None] * n_queries if categories is None else list(categories)
        excluded: list[str | None] = (
            [None] * n_queries if exclude_ids is None else list(exclude_ids)
        )
        if len(cats) != n_queries or len(excluded) != n_queries:
            raise OutcomeMemoryError(
                f"got {n_queries} vectors but {len(cats)} categories and {len(excluded)} "
                "exclude_ids; pass one per vector (or None)"
            )
        stamp = time.time() if now is None else float(now)
        parts = [
            self._predict_block(
                queries[s : s + _PREDICT_CHUNK],
                names,
                k,
                cats[s : s + _PREDICT_CHUNK],
                excluded[s : s + _PREDICT_CHUNK],
                stamp,
            )
            for s in range(0, max(n_queries, 1), _PREDICT_CHUNK)
        ]
        if len(parts) == 1:
            return parts[0]
        return BatchPrediction(
            models=names,
            **{
                f.name: np.concatenate([getattr(p, f.name) for p in parts])
                for f in dataclasses.fields(BatchPrediction)
                if f.name != "models"
            },
        )

    @staticmethod
    def _check_models(models: Sequence[str]) -> list[str]:
        if isinstance(models, str):
            raise OutcomeMemoryError("models must be a list of model names, not one str")
        out = list(models)
        for model in out:
            if not isinstance(model, str) or not model:
                raise OutcomeMemoryError(f"model names must be non-empty str, got {model!r}")
        return out

    def _predict_block(
        self,
        queries: np.ndarray,
        models: tuple[str, ...],
        k: int,
        categories: list[str | None],
        exclude_ids: list[str | None],
        now: float,
    ) -> BatchPrediction:
        settings = self.settings
        with self._lock:
            rows, sims = self._search(queries, k, exclude_ids)
            cols = np.array([self._col_of.get(m, -1) for m in models], dtype=np.intp)
            scores, costs, stamps = self._gather(rows, cols)
            prior, prior_source, mean_cost = self._priors(models, cols, categories)

        weights = self._kernel(sims)[:, :, None] * np.ones((1, 1, len(models)))
        if settings.half_life_s is not None:
            age = np.maximum(now - stamps, 0.0)
            weights = weights * np.exp2(-age / settings.half_life_s)
        present = ~np.isnan(scores)
        weights = np.where(present, weights, 0.0)
        n_eff = weights.sum(axis=1)
        weighted = (weights * np.where(present, scores, 0.0)).sum(axis=1)

        m = settings.shrinkage
        denominator = n_eff + m
        safe = np.where(denominator > 0, denominator, 1.0)
        p = np.where(denominator > 0, (weighted + m * prior) / safe, prior)
        p = np.clip(p, 0.0, 1.0)
        bonus = settings.exploration / np.sqrt(1.0 + n_eff)

        has_cost = ~np.isnan(costs)
        cost_weights = np.where(has_cost, weights, 0.0)
        cost_den = cost_weights.sum(axis=1)
        cost_num = (cost_weights * np.where(has_cost, costs, 0.0)).sum(axis=1)
        fallback = np.broadcast_to(mean_cost, cost_den.shape)
        expected_cost = np.where(
            cost_den > 0, cost_num / np.where(cost_den > 0, cost_den, 1.0), fallback
        )
        return BatchPrediction(
            models=models,
            p_success=p,
            exploration_bonus=bonus,
            ucb=np.minimum(1.0, p + bonus),
            prior=prior,
            prior_source=prior_source,
            expected_cost_usd=expected_cost,
            n_eff=n_eff,
            rows=rows,
            similarities=sims,
            weights=weights,
            scores=scores,
        )

    def _search(
        self, queries: np.ndarray, k: int, exclude_ids: list[str | None]
    ) -> tuple[np.ndarray, np.ndarray]:
        n_queries = len(queries)
        excluded_rows = np.array(
            [self._row_of.get(q, -1) if q is not None else -1 for q in exclude_ids],
            dtype=np.int64,
        )
        extra = 1 if (excluded_rows >= 0).any() else 0
        wanted = min(k + extra, self._n)
        if wanted == 0:
            return np.full((n_queries, k), -1, dtype=np.int64), np.zeros((n_queries, k))
        if isinstance(self._index, faiss.IndexHNSW):
            self._index.hnsw.efSearch = max(self.settings.hnsw_ef_search, wanted)
        sims, rows = self._index.search(queries, wanted)
        rows = rows.astype(np.int64)
        if extra:
            # Drop the excluded row, then keep the k best of what is left (order preserved).
            hit = rows == excluded_rows[:, None]
            order = np.argsort(hit, axis=1, kind="stable")
            rows = np.take_along_axis(rows, order, axis=1)
            sims = np.take_along_axis(sims, order, axis=1)
            rows[np.take_along_axis(hit, order, axis=1)] = -1
        rows, sims = rows[:, :k], sims[:, :k].astype(np.float64)
        if rows.shape[1] < k:
            pad = k - rows.shape[1]
            rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
            sims = np.pad(sims, ((0, 0), (0, pad)))
        sims[rows < 0] = 0.0
        return rows, sims

    def _gather(
        self, rows: np.ndarray, cols: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(queries, k, models) views of score, cost and timestamp; NaN where absent."""
        valid = (rows >= 0)[:, :, None] & (cols >= 0)[None, None, :]
        r = np.where(rows >= 0, rows, 0)[:, :, None]
        c = np.where(cols >= 0, cols, 0)[None, None, :]
        if self._score.size == 0:
            empty = np.full(valid.shape, np.nan)
            return empty, empty.copy(), empty.copy()
        score, cost, stamp = (
            np.where(valid, values[r, c], np.nan)
            for values in (self._score, self._cost, self._time)
        )
        return score, cost, stamp

    def _priors(
        self, models: tuple[str, ...], cols: np.ndarray, categories: list[str | None]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Prior mean per (query, model), where it came from, and each model's mean cost."""
        settings = self.settings
        declared = np.array(
            [settings.model_priors.get(m, np.nan) for m in models], dtype=np.float64
        )
        known = cols >= 0
        safe_cols = np.where(known, cols, 0)

        def per_model(values: np.ndarray) -> np.ndarray:
            """Select the requested models' columns (zero for models never seen)."""
            if values.shape[-1] == 0:
                return np.zeros((*values.shape[:-1], len(models)))
            return np.where(known, values[..., safe_cols], 0)

        count = per_model(self._total_count[_SCORE, 0])
        global_mean = _safe_mean(per_model(self._total_sum[_SCORE, 0]), count)
        mean_cost = _safe_mean(
            per_model(self._total_sum[_COST, 0]), per_model(self._total_count[_COST, 0])
        )

        base = np.where(~np.isnan(declared), declared, settings.default_prior)
        base_source = np.where(
            ~np.isnan(declared), PRIOR_SOURCES.index("declared"), PRIOR_SOURCES.index("default")
        )
        base = np.where(count > 0, global_mean, base)
        base_source = np.where(count > 0, PRIOR_SOURCES.index("global"), base_source)

        groups = np.array(
            [self._cat_of.get(c, -1) + 1 if c is not None else 0 for c in categories],
            dtype=np.intp,
        )
        prior = np.tile(base, (len(categories), 1))
        source = np.tile(base_source, (len(categories), 1)).astype(np.int8)
        if (groups > 0).any():
            cat_count = per_model(self._total_count[_SCORE][groups])
            cat_sum = per_model(self._total_sum[_SCORE][groups])
            use = (groups > 0)[:, None] & (cat_count >= settings.min_category_count)
            prior = np.where(use, _safe_mean(cat_sum, cat_count), prior)
            source = np.where(use, PRIOR_SOURCES.index("category"), source).astype(np.int8)
        return prior, source, mean_cost

    def _kernel(self, sims: np.ndarray) -> np.ndarray:
        settings = self.settings
        clipped = np.clip(sims, -1.0, 1.0)
        if settings.weighting == "power":
            weights = np.maximum(clipped, 0.0) ** settings.alpha
        else:
            weights = np.exp((clipped - 1.0) / settings.temperature)
        return np.where(sims >= settings.min_similarity, weights, 0.0)

    def _predictions_for(
        self, batch: BatchPrediction, b: int, ids: list[str]
    ) -> dict[str, Prediction]:
        rows = batch.rows[b]
        sims = batch.similarities[b]
        out = {}
        for j, model in enumerate(batch.models):
            used = np.flatnonzero(batch.weights[b, :, j] > 0)
            cost = float(batch.expected_cost_usd[b, j])
            evidence = Evidence(
                query_ids=tuple(ids[r] for r in rows[used].tolist()),
                similarities=tuple(sims[used].tolist()),
                weights=tuple(batch.weights[b, used, j].tolist()),
                scores=tuple(batch.scores[b, used, j].tolist()),
                n_eff=float(batch.n_eff[b, j]),
            )
            out[model] = Prediction(
                model=model,
                p_success=float(batch.p_success[b, j]),
                exploration_bonus=float(batch.exploration_bonus[b, j]),
                ucb=float(batch.ucb[b, j]),
                prior=float(batch.prior[b, j]),
                prior_source=PRIOR_SOURCES[int(batch.prior_source[b, j])],
                expected_cost_usd=None if math.isnan(cost) else cost,
                evidence=evidence,
            )
        return out

    # ---------------------------------------------------------------- persistence

    def save(self, directory: str | Path) -> Path:
        """Write a new generation atomically; returns its directory.

        Concurrent `add` calls may continue during the file writes: the snapshot is taken
        under the lock first. Concurrent saves and loads of one directory (also from other
        processes) are serialized by an advisory file lock.
        """
        directory = Path(directory)
        files, meta = self._snapshot()
        directory.mkdir(parents=True, exist_ok=True)
        with _directory_lock(directory, exclusive=True):
            name = _next_generation_name(directory)
            staging = directory / f".tmp-{name}"
            staging.mkdir()
            meta["files"] = {}
            for filename, data in files.items():
                _write_bytes(staging / filename, data)
                meta["files"][filename] = {"bytes": len(data), "sha256": _sha256(data)}
            meta_bytes = json.dumps(meta, sort_keys=True).encode()
            _write_bytes(staging / META_FILE, meta_bytes)
            fsync_dir(staging)
            final = directory / name
            os.replace(staging, final)
            fsync_dir(directory)
            manifest = {
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "generation": name,
                "meta_sha256": _sha256(meta_bytes),
                "embedder_id": self.embedder_id,
            }
            _replace_file(directory / MANIFEST_FILE, json.dumps(manifest, indent=2).encode())
            _remove_stale(directory, keep=name)
        return final

    def _snapshot(self) -> tuple[dict[str, bytes | memoryview], dict[str, Any]]:
        with self._lock:
            n, m = self._n, len(self._models)
            index_bytes = faiss.serialize_index(self._index).data
            buffer = io.BytesIO()
            np.savez(
                buffer,
                row_category=self._row_cat[:n].copy(),
                score=self._score[:n, :m].copy(),
                cost_usd=self._cost[:n, :m].copy(),
                latency_s=self._latency[:n, :m].copy(),
                timestamp=self._time[:n, :m].copy(),
                source=self._source[:n, :m].copy(),
                total_count=self._total_count[:, : len(self._categories) + 1, :m].copy(),
                total_sum=self._total_sum[:, : len(self._categories) + 1, :m].copy(),
            )
            meta = {
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "embedder_id": self.embedder_id,
                "dim": self.dim,
                "index_kind": self.settings.index_kind,
                "settings": self.settings.to_dict(),
                "n_rows": n,
                "query_ids": list(self._ids),
                "models": list(self._models),
                "categories": list(self._categories),
                "sources": list(SOURCES),
                "saved_at": time.time(),
            }
        return {INDEX_FILE: index_bytes, ARRAYS_FILE: buffer.getvalue()}, meta

    @classmethod
    def load(
        cls,
        directory: str | Path,
        expected_embedder_id: str | None = None,
        *,
        settings: MemorySettings | None = None,
    ) -> OutcomeMemory:
        """Load the current generation of a saved memory.

        Raises `OutcomeMemoryError` when nothing was saved there, a file is missing,
        truncated or corrupt, the format is newer than this code, or the memory was built by
        another embedder than ``expected_embedder_id``. ``settings`` replaces the saved
        prediction settings; its ``index_kind`` must match the saved index.
        """
        directory = Path(directory)
        if not (directory / MANIFEST_FILE).is_file():
            raise OutcomeMemoryError(
                f"no saved OutcomeMemory in {directory} ({MANIFEST_FILE} is missing); "
                "build one and call save() first"
            )
        with _directory_lock(directory, exclusive=False):
            manifest = _read_manifest(directory)
            generation = directory / manifest["generation"]
            meta_bytes = _read_checked(generation / META_FILE, None, manifest["meta_sha256"])
            try:
                meta = json.loads(meta_bytes)
                _check_embedder(meta, expected_embedder_id, directory)
                blobs = {
                    name: _read_checked(generation / name, info["bytes"], info["sha256"])
                    for name, info in meta["files"].items()
                }
            except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
                raise _damaged(generation, exc) from exc
        if set(blobs) != {INDEX_FILE, ARRAYS_FILE}:
            raise OutcomeMemoryError(f"{generation} lists files {sorted(blobs)}; it is damaged")
        saved = MemorySettings.from_dict(meta["settings"])
        if settings is not None and settings.index_kind != saved.index_kind:
            raise OutcomeMemoryError(
                f"settings.index_kind={settings.index_kind!r} but the memory in {directory} "
                f"has a {saved.index_kind!r} index; keep index_kind={saved.index_kind!r}"
            )
        try:
            memory = cls(int(meta["dim"]), str(meta["embedder_id"]), settings or saved)
            memory._restore(meta, blobs[INDEX_FILE], blobs[ARRAYS_FILE], generation)
        except OutcomeMemoryError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # FAISS raises these
            raise _damaged(generation, exc) from exc
        return memory

    def _restore(
        self, meta: dict[str, Any], index_bytes: bytes, arrays_bytes: bytes, where: Path
    ) -> None:
        index = faiss.deserialize_index(np.frombuffer(index_bytes, dtype=np.uint8))
        n = int(meta["n_rows"])
        expected_type = faiss.IndexFlatIP if self.index_kind == "flat" else faiss.IndexHNSWFlat
        if (
            not isinstance(index, expected_type)
            or index.d != self.dim
            or index.ntotal != n
            or index.metric_type != faiss.METRIC_INNER_PRODUCT
        ):
            raise OutcomeMemoryError(
                f"{where / INDEX_FILE} holds a {type(index).__name__} with d={index.d}, "
                f"{index.ntotal} vectors; meta.json expects a {self.settings.index_kind} "
                f"inner-product index with d={self.dim} and {n} vectors. The save is damaged"
            )
        with np.load(io.BytesIO(arrays_bytes), allow_pickle=False) as arrays:
            data = {name: arrays[name] for name in arrays.files}
        ids, models = list(meta["query_ids"]), list(meta["models"])
        shape = (n, len(models))
        totals_shape = (_METRICS, len(meta["categories"]) + 1, len(models))
        expected_shapes = {
            "row_category": (n,),
            "total_count": totals_shape,
            "total_sum": totals_shape,
        } | {name: shape for name in ("score", "cost_usd", "latency_s", "timestamp", "source")}
        for name, wanted in expected_shapes.items():
            found = data[name].shape if name in data else "nothing"
            if found != wanted:
                raise OutcomeMemoryError(
                    f"{where / ARRAYS_FILE}: {name} has shape {found}, expected {wanted}; "
                    "the save is damaged"
                )
        if list(meta.get("sources", SOURCES)) != list(SOURCES) or len(ids) != n:
            raise OutcomeMemoryError(f"{where / META_FILE} is inconsistent; the save is damaged")
        with self._lock:
            self._index = index
            self._ids = ids
            self._row_of = {query_id: row for row, query_id in enumerate(ids)}
            self._models = models
            self._col_of = {model: col for col, model in enumerate(models)}
            self._categories = list(meta["categories"])
            self._cat_of = {c: code for code, c in enumerate(self._categories)}
            self._n = n
            self._row_cat = data["row_category"].astype(np.int32)
            self._score = data["score"].astype(np.float64)
            self._cost = data["cost_usd"].astype(np.float64)
            self._latency = data["latency_s"].astype(np.float64)
            self._time = data["timestamp"].astype(np.float64)
            self._source = data["source"].astype(np.int8)
            # The running totals are restored verbatim (not re-summed in another order), so
            # a loaded memory predicts bit-identically; re-summing only cross-checks them.
            self._total_count = data["total_count"].astype(np.int64)
            self._total_sum = data["total_sum"].astype(np.float64)
            self._check_totals(where)
            if isinstance(index, faiss.IndexHNSW):
                index.hnsw.efSearch = self.settings.hnsw_ef_search

    def _check_totals(self, where: Path) -> None:
        count, total = self._recomputed_totals()
        m = len(self._models)
        stored_count = self._total_count[:, :, :m]
        stored_total = self._total_sum[:, :, :m]
        if not np.array_equal(count, stored_count) or not np.allclose(
            total, stored_total, rtol=1e-9, atol=1e-9
        ):
            raise OutcomeMemoryError(
                f"{where / ARRAYS_FILE}: per-model totals disagree with the stored outcomes; "
                "the save is damaged"
            )

    def __repr__(self) -> str:
        return (
            f"OutcomeMemory(queries={len(self)}, models={len(self._models)}, dim={self.dim}, "
            f"index={self.settings.index_kind!r}, embedder_id={self.embedder_id!r})"
        )


# --------------------------------------------------------------------------------------------
# File helpers
# --------------------------------------------------------------------------------------------


def _sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_bytes(path: Path, data: bytes | memoryview) -> None:
    """Write and fsync one file (the durable step every save goes through)."""
    with path.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _replace_file(path: Path, data: bytes) -> None:
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    _write_bytes(temp, data)
    os.replace(temp, path)
    fsync_dir(path.parent)


@contextlib.contextmanager
def _directory_lock(directory: Path, *, exclusive: bool) -> Iterator[None]:
    """Advisory lock between processes: saves are exclusive, loads shared."""
    try:
        import fcntl
    except ImportError:  # not POSIX: saves still never leave a half-written generation
        yield
        return
    try:
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        if exclusive:
            raise
        yield  # a read-only memory directory can still be loaded
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def _generation_number(name: str) -> int | None:
    match = _GENERATION.match(name)
    return int(match.group(1)) if match else None


def _next_generation_name(directory: Path) -> str:
    numbers = [_generation_number(p.name.removeprefix(".tmp-")) for p in directory.iterdir()]
    latest = max((n for n in numbers if n is not None), default=0)
    return f"gen-{latest + 1:06d}-{secrets.token_hex(4)}"


def _remove_stale(directory: Path, *, keep: str) -> None:
    """Delete older generations and leftovers of interrupted saves."""
    import shutil

    for path in directory.iterdir():
        name = path.name
        if name == keep:
            continue
        if _generation_number(name.removeprefix(".tmp-")) is not None and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif name.startswith(f".{MANIFEST_FILE}.") and name.endswith(".tmp"):
            path.unlink(missing_ok=True)


def _read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise OutcomeMemoryError(f"cannot read {path}: {exc}; the save is damaged") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise OutcomeMemoryError(f"{path} is not an OutcomeMemory manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise OutcomeMemoryError(
            f"{path} has format_version {version!r}; this emafusion reads up to "
            f"{FORMAT_VERSION}, upgrade it to load this memory"
        )
    generation = manifest.get("generation")
    if not isinstance(generation, str) or _generation_number(generation) is None:
        raise OutcomeMemoryError(f"{path} names a bad generation {generation!r}")
    if not (directory / generation).is_dir():
        raise OutcomeMemoryError(
            f"{path} points at {generation}/, which is missing; the directory was changed "
            "outside OutcomeMemory.save"
        )
    return manifest


def _read_checked(path: Path, size: int | None, sha256: str) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise OutcomeMemoryError(
            f"{path.name} is missing from {path.parent}; the save is damaged, restore it "
            "from a backup or rebuild the memory"
        ) from exc
    if size is not None and len(data) != size:
        raise OutcomeMemoryError(
            f"{path} is truncated or padded: {len(data)} bytes, expected {size}; the save is "
            "damaged, restore it from a backup or rebuild the memory"
        )
    if _sha256(data) != sha256:
        raise OutcomeMemoryError(f"{path} fails its sha256 check; the save is damaged")
    return data


def _damaged(generation: Path, exc: BaseException) -> OutcomeMemoryError:
    return OutcomeMemoryError(
        f"cannot read the memory in {generation}: {exc!r}; the save is damaged, restore it "
        "from a backup or rebuild the memory"
    )


def _check_embedder(meta: Mapping[str, Any], expected: str | None, directory: Path) -> None:
    if expected is not None and meta.get("embedder_id") != expected:
        raise OutcomeMemoryError(
            f"the memory in {directory} was built with embedder {meta.get('embedder_id')!r}, "
            f"not {expected!r}; its vectors are incomparable. Rebuild the memory with the "
            "current embedder (or load it with that embedder)"
        )
