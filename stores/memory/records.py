"""What the memory stores and how it is tuned: outcomes, stored queries, log entries, settings.

Everything here validates its input on construction, so a bad value fails where it enters
(with the field and the fix in the message), never later inside a prediction or a replay.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np

Source = Literal["recording", "live_judged", "user_feedback"]
IndexKind = Literal["flat", "hnsw"]
Weighting = Literal["power", "exp"]

SOURCES: tuple[Source, ...] = get_args(Source)
# Ground truth: what really happened to an answer. A judged outcome is the judges' guess.
GROUND_TRUTH_SOURCES: frozenset[str] = frozenset({"recording", "user_feedback"})
JUDGED_SOURCES: frozenset[str] = frozenset({"live_judged"})
# Within the ground truth, a user's feedback on an answer outranks a recording: the feedback
# is about the very answer that was served, a recording about another run of the model.
# Equal ranks go by timestamp (the newest wins, ties to the newly added).
SOURCE_RANK: dict[str, int] = {"recording": 0, "user_feedback": 1, "live_judged": 0}

NORM_TOLERANCE = 1e-3


class OutcomeMemoryError(ValueError):
    """Bad input to, or a bad file for, an `OutcomeMemory`. The message names the fix."""


def finite_number(value: object, name: str, hint: str) -> float:
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
    ``source`` says how the score is known: ``recording`` and ``user_feedback`` are ground
    truth, ``live_judged`` is the judges' estimate; the memory keeps the two apart.
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
        score = finite_number(self.score, f"{where}.score", "pass a score in [0, 1]")
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
            number = finite_number(value, f"{where}.{name}", hint)
            if number < 0:
                raise OutcomeMemoryError(f"{where}.{name} must be >= 0, got {number}; {hint}")
            object.__setattr__(self, name, number)
        stamp = finite_number(self.timestamp, f"{where}.timestamp", "pass unix seconds")
        if stamp < 0:
            raise OutcomeMemoryError(f"{where}.timestamp must be unix seconds >= 0, got {stamp}")
        object.__setattr__(self, "timestamp", stamp)
        if self.source not in SOURCES:
            raise OutcomeMemoryError(
                f"{where}.source must be one of {SOURCES}, got {self.source!r}"
            )

    @property
    def is_ground_truth(self) -> bool:
        return self.source in GROUND_TRUTH_SOURCES


@dataclass(frozen=True, slots=True)
class StoredQuery:
    """One stored query.

    ``outcomes`` is what predictions use per model: the ground-truth outcome where there is
    one, else the judged one. ``ground_truth`` and ``judged`` hold the two kinds apart.
    ``category`` is the one used for category priors: the ``label`` when the query has one,
    else the ``predicted_category``.
    """

    query_id: str
    category: str | None
    outcomes: Mapping[str, OutcomeRecord]
    ground_truth: Mapping[str, OutcomeRecord] = field(default_factory=dict)
    judged: Mapping[str, OutcomeRecord] = field(default_factory=dict)
    label: str | None = None
    predicted_category: str | None = None


def check_query_id(query_id: object) -> str:
    if not isinstance(query_id, str) or not query_id:
        raise OutcomeMemoryError(f"query_id must be a non-empty str, got {query_id!r}")
    return query_id


def check_category(category: object) -> str | None:
    if category is None:
        return None
    if not isinstance(category, str) or not category:
        raise OutcomeMemoryError(f"category must be a non-empty str or None, got {category!r}")
    return category


def prepare_outcomes(
    outcomes: Iterable[OutcomeRecord | Mapping[str, Any]], query_id: str
) -> tuple[OutcomeRecord, ...]:
    """Outcome records from records or mappings of their fields, or a clear error."""
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
    return tuple(records)


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One learning step as the outcome log holds it: a query, its vector and outcomes.

    The vector is always carried (also for a query the writer already knew): a reader may
    replay the entry onto a generation that has never seen the query. ``category_is_label``
    says whether ``category`` is a label (ground truth) or a predicted category.
    """

    query_id: str
    vector: np.ndarray
    outcomes: tuple[OutcomeRecord, ...]
    category: str | None = None
    category_is_label: bool = False


@dataclass(frozen=True, kw_only=True)
class MemorySettings:
    """Tuning of an `OutcomeMemory`; saved with it.

    Neighbour weights: ``weighting="power"`` uses ``max(sim, 0) ** alpha``, ``"exp"`` uses
    ``exp((sim - 1) / temperature)``; neighbours below ``min_similarity`` weigh nothing.
    ``half_life_s`` (None = off) multiplies each outcome's weight by
    ``0.5 ** (age / half_life_s)``. ``shrinkage`` is ``m``, the prior's pseudo-count
    (in the neighbour estimate, and in the global mean's shrinkage toward the base prior).
    A category prior needs ``min_category_count`` records of the model in that category.
    ``model_priors`` declares priors for models (e.g. from price tier or benchmarks), used
    when the memory has no record of them and as what their first records are shrunk
    toward; others start at ``default_prior``.
    ``exploration`` is ``c`` in the bonus ``c / sqrt(1 + n_eff)``.
    ``judged_weight`` is how much a judged outcome counts next to a ground-truth one (1.0)
    in neighbour estimates and priors. It is 0 by default: judged outcomes are stored but
    move nothing until a caller has measured how well the judges are calibrated and set it.
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
    judged_weight: float = 0.0
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
            isinstance(self.judged_weight, int | float) and 0.0 <= self.judged_weight <= 1.0,
            f"judged_weight must be in [0, 1] (0: judged outcomes do not count, 1: as much as "
            f"ground truth), got {self.judged_weight!r}",
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
