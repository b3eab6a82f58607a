"""Small, dependency-free metrics used by reports and the evaluation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties).

    NaN when only one class is present.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # Average ranks over runs of tied scores.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(scores)]])
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """Mean |accuracy - confidence| over equal-width bins, weighted by bin size."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(probs, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.sum() * abs(labels[mask].mean() - probs[mask].mean())
    return total / max(1, len(probs))


def upper_concave_hull(
    items: Sequence[T], cost: Callable[[T], float], value: Callable[[T], float]
) -> list[T]:
    """The items on the non-decreasing upper concave hull of (cost, value), cheapest first.

    An item is dropped when a cheaper one is worth as much, or when it lies on or below the
    chord between its neighbours: mixing those two would give as much for the same cost.
    """
    ordered = sorted(items, key=lambda it: (cost(it), -value(it)))
    hull: list[T] = []
    for item in ordered:
        if hull and (value(item) <= value(hull[-1]) or cost(item) == cost(hull[-1])):
            continue
        while len(hull) >= 2:
            x1, y1 = cost(hull[-2]), value(hull[-2])
            x2, y2 = cost(hull[-1]), value(hull[-1])
            if (y2 - y1) * (cost(item) - x1) <= (value(item) - y1) * (x2 - x1):
                hull.pop()
            else:
                break
        hull.append(item)
    return hull
