"""What predictions and statistics return."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

PriorSource = Literal["category", "global", "declared", "default"]
PRIOR_SOURCES: tuple[PriorSource, ...] = get_args(PriorSource)


@dataclass(frozen=True, slots=True)
class Evidence:
    """The neighbours that informed one model's prediction (those with a positive weight).

    ``weights`` are after the similarity kernel, time decay and (for judged outcomes)
    ``MemorySettings.judged_weight``; ``n_eff`` is their sum, the similarity-weighted count
    of this model's outcomes near the query. ``judged[i]`` tells whether neighbour i
    contributed a judged outcome (True) or ground truth (False).
    """

    query_ids: tuple[str, ...]
    similarities: tuple[float, ...]
    weights: tuple[float, ...]
    scores: tuple[float, ...]
    n_eff: float
    judged: tuple[bool, ...] = ()


@dataclass(frozen=True, slots=True)
class Prediction:
    """A model's estimated chance of success on a query.

    ``p_success`` is the shrunk neighbour estimate; the exploration bonus is kept apart and
    only added in ``ucb`` (= ``optimistic``) = min(1, p_success + exploration_bonus).
    ``truth_count`` / ``judged_count`` count the neighbours with a ground-truth / judged
    outcome of this model (kernel weight > 0, whatever ``judged_weight`` is), and
    ``n_truth`` / ``n_judged`` sum their kernel weights before ``judged_weight``, so
    ``n_eff = n_truth + judged_weight * n_judged``.
    """

    model: str
    p_success: float
    exploration_bonus: float
    ucb: float
    prior: float
    prior_source: PriorSource
    expected_cost_usd: float | None
    evidence: Evidence
    truth_count: int = 0
    judged_count: int = 0
    n_truth: float = 0.0
    n_judged: float = 0.0

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
    ``rows``/``similarities`` (queries, k) are the neighbours found (row -1: none),
    ``weights`` (queries, k, models) what each contributed per model and ``judged``
    (queries, k, models) whether that contribution was a judged outcome. The count and
    weight arrays are those of `Prediction`.
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
    judged: np.ndarray
    truth_count: np.ndarray
    judged_count: np.ndarray
    n_truth: np.ndarray
    n_judged: np.ndarray


@dataclass(frozen=True, slots=True)
class ModelStats:
    """One model's record in a scope (all queries, or one category).

    ``count`` is its ground-truth outcomes and ``judged_count`` its judged ones (on queries
    without ground truth for it); ``mean_score`` weighs the judged ones by
    ``MemorySettings.judged_weight``. Costs and latencies are measured, not judged, so their
    means (over ``cost_count`` known costs) count every outcome in full.
    """

    model: str
    count: int
    mean_score: float
    cost_count: int
    mean_cost_usd: float | None
    mean_latency_s: float | None
    judged_count: int = 0
    judged_weight: float = 0.0  # what one judged outcome counts in `mean_score`

    @property
    def count_weighted(self) -> float:
        """The outcomes `mean_score` is a mean of: ground truth, plus judged ones weighted."""
        return self.count + self.judged_weight * self.judged_count


def safe_mean(total: np.ndarray, count: np.ndarray) -> np.ndarray:
    out = np.full(np.shape(total), np.nan)
    np.divide(total, count, out=out, where=count > 0)
    return out
