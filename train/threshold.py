"""The escalation threshold that meets a goal on judged traces (fit on validation).

Every candidate threshold is replayed through the decision policy over the same traces,
so the chosen point is what the graph does at that threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from emafusion.graph.state import CascadeView
from emafusion.nodes.policy import PolicySettings
from emafusion.stores.combiner import CombinerError
from emafusion.train.traces import CascadeResult, JudgedTraces

GoalKind = Literal["target_accuracy", "max_cost_per_1k", "max_escalation_rate"]


def candidate_thresholds(confidence: np.ndarray, most: int = 400) -> np.ndarray:
    """Every distinct confidence (or `most` quantiles of them), 0, and 1."""
    values = np.unique(confidence[~np.isnan(confidence)])
    if len(values) > most:
        values = np.unique(np.quantile(values, np.linspace(0.0, 1.0, most)))
    return np.unique(np.concatenate([[0.0], np.clip(values, 0.0, 1.0), [1.0]]))


@dataclass(frozen=True)
class Goal:
    kind: GoalKind
    value: float

    def __post_init__(self) -> None:
        if self.kind not in ("target_accuracy", "max_cost_per_1k", "max_escalation_rate"):
            raise CombinerError(f"unknown goal {self.kind!r}")
        if not math.isfinite(self.value) or self.value < 0:
            raise CombinerError(f"goal {self.kind} must be a finite number >= 0, got {self.value}")
        if self.kind != "max_cost_per_1k" and self.value > 1:
            raise CombinerError(
                f"goal {self.kind} is a fraction in [0, 1], got {self.value}. Fix: pass e.g. 0.7"
            )

    def describe(self) -> str:
        if self.kind == "target_accuracy":
            return f"cheapest threshold with accuracy >= {self.value:.4f}"
        if self.kind == "max_cost_per_1k":
            return f"most accurate threshold costing <= ${self.value:.4f} per 1k queries"
        return f"most accurate threshold escalating <= {self.value:.1%} of queries"


@dataclass(frozen=True)
class ThresholdChoice:
    goal: Goal
    threshold: float
    result: CascadeResult
    met: bool


def threshold_curve(
    traces: JudgedTraces,
    views: Sequence[Sequence[CascadeView]],
    base: PolicySettings,
    thresholds: Sequence[float] | None = None,
) -> list[CascadeResult]:
    grid = candidate_thresholds(traces.confidences(views)) if thresholds is None else thresholds
    return [traces.evaluate(replace(base, threshold=float(t)), views) for t in grid]


def select_threshold(
    traces: JudgedTraces,
    views: Sequence[Sequence[CascadeView]],
    goal: Goal,
    base: PolicySettings,
) -> ThresholdChoice:
    """The threshold meeting `goal` on these traces (fit on validation, then used as is).

    Unreachable goals fall back to the closest point (most accurate, or cheapest) and say so.
    """
    curve = threshold_curve(traces, views, base)
    acc = np.array([r.accuracy for r in curve])
    cost = np.array([r.cost_per_1k for r in curve])
    esc = np.array([r.escalation_rate for r in curve])
    order = np.arange(len(curve))
    # Ties resolve to the cheaper, then the lower threshold (fewer escalations).
    if goal.kind == "target_accuracy":
        feasible = acc >= goal.value - 1e-12
        pool = feasible if feasible.any() else np.isclose(acc, acc.max())
        best = int(np.lexsort((order, cost, ~pool))[0])
    else:
        limit = cost if goal.kind == "max_cost_per_1k" else esc
        feasible = limit <= goal.value + 1e-12
        if feasible.any():
            best = int(np.lexsort((order, cost, -acc, ~feasible))[0])
        else:
            best = int(np.lexsort((order, -acc, limit))[0])
    chosen = curve[best]
    return ThresholdChoice(goal, chosen.threshold, chosen, bool(feasible.any()))
