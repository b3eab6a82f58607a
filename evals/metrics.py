"""Router metrics on (cost, accuracy) points: hulls, APGR, CPT, AIQ, bootstrap gain.

Definitions (costs in USD per 1k queries, accuracy in [0, 1]):
- Zero-router hull: the best accuracy reachable at each cost by randomly mixing single
  models, i.e. the upper concave hull of their points (RouterBench's zero router).
- AIQ (RouterBench): the mean of a curve's non-decreasing concave hull over the cost range
  [c_min, c_max] of the single models. Below a router's cheapest point its curve falls
  back to mixing with the cheapest single model (any router can route there).
- APGR and CPT(x) (RouteLLM), between the weak (cheapest) and strong (most accurate) single
  model: PGR = (acc - acc_weak) / (acc_strong - acc_weak) on the axis of normalized cost
  (cost - cost_weak) / (cost_strong - cost_weak) in place of RouteLLM's share of calls to
  the strong model. APGR integrates PGR over [0, 1]; CPT(x) is the least normalized cost
  reaching PGR >= x.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from emafusion.stores.metrics import upper_concave_hull

Point = tuple[float, float]  # (cost per 1k, accuracy)


def upper_hull(points: Sequence[Point]) -> list[Point]:
    """Non-decreasing upper concave hull, cheapest point first."""
    return upper_concave_hull(sorted(set(points)), lambda p: p[0], lambda p: p[1])


def hull_value(hull: Sequence[Point], cost: float) -> float:
    """Accuracy of the hull at `cost` (flat past its last point; nan before its first)."""
    if not hull or cost < hull[0][0] - 1e-12:
        return float("nan")
    for (x1, y1), (x2, y2) in zip(hull, hull[1:], strict=False):
        if x1 <= cost <= x2:
            return y1 if x2 == x1 else y1 + (y2 - y1) * (cost - x1) / (x2 - x1)
    return hull[-1][1]


def aiq(points: Sequence[Point], singles: Sequence[Point], samples: int = 2001) -> float:
    """RouterBench's AIQ of `points` over the single models' cost range (see module doc)."""
    c_min = min(c for c, _ in singles)
    c_max = max(c for c, _ in singles)
    cheapest = min(singles)
    hull = upper_hull([*points, cheapest])
    grid = np.linspace(c_min, c_max, samples)
    values = np.array([hull_value(hull, c) for c in grid])
    return float(np.trapezoid(values, grid) / (c_max - c_min))


def pgr_curve(points: Sequence[Point], weak: Point, strong: Point) -> tuple[np.ndarray, np.ndarray]:
    """(normalized cost, PGR) of the hull through the points and the weak model."""
    span_cost = strong[0] - weak[0]
    span_acc = strong[1] - weak[1]
    hull = upper_hull([*points, weak])
    xs = np.linspace(0.0, 1.0, 1001)
    ys = np.array([hull_value(hull, weak[0] + x * span_cost) for x in xs])
    return xs, (ys - weak[1]) / span_acc


def apgr(points: Sequence[Point], weak: Point, strong: Point) -> float:
    xs, pgr = pgr_curve(points, weak, strong)
    return float(np.trapezoid(np.nan_to_num(pgr), xs))


def cpt(points: Sequence[Point], weak: Point, strong: Point, target: float = 0.5) -> float:
    """Least normalized cost reaching PGR >= target (nan if never reached within [0, 1])."""
    xs, pgr = pgr_curve(points, weak, strong)
    reached = np.flatnonzero(pgr >= target)
    return float(xs[reached[0]]) if len(reached) else float("nan")


def bootstrap_gain(
    router: np.ndarray, baseline: np.ndarray, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean paired accuracy gain and its 95% percentile bootstrap interval."""
    diff = np.asarray(router, dtype=float) - np.asarray(baseline, dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), size=(resamples, len(diff)))
    means = diff[idx].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(diff.mean()), float(low), float(high)
