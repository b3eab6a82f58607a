"""What each preset's goal picks among operating points (train/fusion_search.goals_for)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from emafusion.train.fusion import Goal, Point, best_point
from emafusion.train.fusion_search import goals_for


@dataclass
class _Signals:  # what goals_for reads of a query's signals
    scores: dict[str, float]
    costs: dict[str, float] = field(default_factory=dict)

    def score(self, model: str | None) -> float:
        return self.scores.get(model or "", 0.0)


def _point(accuracy: float, cost: float) -> Point:
    return Point(0.5, accuracy, cost, 1.0, 0.0, np.zeros(1))


def _goals() -> dict[str, Goal]:
    # The best single model: right on 4 of 5 queries at $1 per 1k queries.
    signals = [_Signals({"strong": float(i < 4)}, {"strong": 0.001}) for i in range(5)]
    return {goal.name: goal for goal in goals_for(signals, "strong")}


def test_cheap_is_the_cheapest_point_matching_the_best_model_below_its_cost() -> None:
    goals = _goals()
    dearer_match, cheap_match, cheapest_miss = (
        _point(0.82, 1.2),
        _point(0.80, 0.9),
        _point(0.7, 0.2),
    )
    points = [dearer_match, cheap_match, cheapest_miss]
    assert best_point(points, goals["cheap"]) is cheap_match
    assert best_point(points, goals["default"]) is cheap_match
    assert best_point(points, goals["max"]) is dearer_match


def test_matching_the_best_model_only_above_its_cost_is_not_cheap() -> None:
    # Calling the best model alone would match it for less: no cheap point (the search then
    # falls back to the most accurate point at a fixed share of its cost).
    goals = _goals()
    assert best_point([_point(0.82, 1.2), _point(0.7, 0.2)], goals["cheap"]) is None
