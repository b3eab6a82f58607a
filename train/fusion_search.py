"""Choosing the router's operating points (presets) from cross-fitted train traces.

1. Plans: candidate staged plans (`candidate_plans`) are screened on a fixed sample of the
   cross-fitted train queries, the best few per goal re-measured on all of them; the plan
   structure is chosen on train alone.
2. The calibrator of the fused confidence is fitted on the chosen plans' train traces.
3. One knob per preset, the threshold, is chosen on train + validation for its goal:
   `default` the most accurate at <= the best single model's cost, `cheap` the cheapest at
   >= its accuracy (else the most accurate at <= 0.6x its cost), `max` the most accurate.
4. Per model of a preset's plan, a fallback plan: the screening's best for the same goal
   without that model, with its own threshold; the graph switches to it when live
   evidence says the model degraded (`RecentResiduals.degraded`).

The figures at selection time are kept with each preset, so the report can print them
next to test.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emafusion.nodes.policy import PolicySettings
from emafusion.nodes.resources import RouterResources
from emafusion.stores.fusion import FusionModel
from emafusion.train.fusion import (
    Goal,
    PlanTraces,
    Point,
    best_point,
    candidate_models,
    candidate_plans,
    fit_calibrator,
    threshold_grid,
)
from emafusion.train.fusion_traces import Plan, QuerySignals, fold_of

SCREEN_QUERIES = 1500
SCREEN_THRESHOLDS = 8
SHORTLIST = 3
FULL_THRESHOLDS = 24
MAX_LEVELS = 8
CHEAP_COST_SHARE = 0.6


@dataclass(frozen=True)
class Fallback:
    """The preset's plan for when `without` has degraded: the best the same search found
    without that model, at its own threshold for the preset's goal."""

    without: str
    plan: Plan
    threshold: float | None
    selection: Point

    def settings(self) -> dict[str, Any]:
        stop = self.threshold is not None
        return {
            "stages": {k: [list(s) for s in v] for k, v in self.plan.items()},
            "escalation_threshold": self.threshold if stop else 1.0,
            "stop_early": stop,
        }


@dataclass(frozen=True)
class Chosen:
    """A preset: its plan and threshold, and what it reached where it was chosen."""

    name: str
    goal: Goal
    plan: Plan
    threshold: float | None
    selection: Point  # train (cross-fitted) + validation, at the chosen threshold
    train: Point
    validation: Point
    note: str = ""
    fallbacks: tuple[Fallback, ...] = ()

    def settings(self, taxonomy_threshold: float) -> dict[str, Any]:
        """The run settings of this preset (what presets.json stores)."""
        stop = self.threshold is not None
        settings: dict[str, Any] = {
            "stages": {k: [list(s) for s in v] for k, v in self.plan.items()},
            "fusion": "vote",
            "judges": [],
            "escalation_threshold": self.threshold if stop else 1.0,
            "stop_early": stop,
            "max_levels": MAX_LEVELS,
            "taxonomy_threshold": taxonomy_threshold,
        }
        if self.fallbacks:
            settings["fallback_plans"] = {f.without: f.settings() for f in self.fallbacks}
        return settings


def plan_models(plan: Plan) -> set[str]:
    return {m for stages in plan.values() for stage in stages for m in stage}


@dataclass
class SearchLog:
    candidates: list[str] = field(default_factory=list)
    plans: int = 0
    screened_on: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    shortlist: dict[str, list[str]] = field(default_factory=dict)


def describe(plan: Plan) -> str:
    return " | ".join(
        f"{k}: " + " > ".join("+".join(s) for s in v) for k, v in sorted(plan.items())
    )


def _merge(points: Sequence[Point]) -> Point:
    """Points of disjoint query sets as one (weighted by their queries)."""
    sizes = [len(p.correct) for p in points]
    n = max(1, sum(sizes))

    def avg(attr: str) -> float:
        return sum(getattr(p, attr) * s for p, s in zip(points, sizes, strict=True)) / n

    return Point(
        points[0].threshold,
        avg("accuracy"),
        avg("cost_per_1k"),
        avg("models_called"),
        avg("escalation_rate"),
        np.concatenate([p.correct for p in points]),
    )


def single_figures(signals: Sequence[QuerySignals], model: str) -> tuple[float, float]:
    """(accuracy, USD per 1k) of always calling `model`."""
    acc = float(np.mean([s.score(model) for s in signals]))
    cost = float(np.mean([s.costs.get(model, 0.0) for s in signals])) * 1000.0
    return acc, cost


def goals_for(signals: Sequence[QuerySignals], best: str) -> list[Goal]:
    """default: the most accurate at the best single model's cost; cheap: the cheapest at
    its accuracy *and below its cost* (a router that needs more than the model alone to
    match it is not cheap: calling the model is); max: the most accurate."""
    acc, cost = single_figures(signals, best)
    return [
        Goal("default", max_cost_per_1k=cost),
        Goal("cheap", max_cost_per_1k=cost, min_accuracy=acc),
        Goal("max"),
    ]


def fit_presets(
    train: Sequence[QuerySignals],
    validation: Sequence[QuerySignals],
    resources: RouterResources,
    best_single: str,
    taxonomy_threshold: float,
    smoothing: float = 10.0,
    log: Callable[[str], None] = print,
) -> tuple[FusionModel, list[Chosen], SearchLog]:
    search = SearchLog()
    settings = PolicySettings(threshold=0.5, max_levels=MAX_LEVELS, fusion="vote")
    raw = FusionModel(smoothing=smoothing)
    started = time.perf_counter()
    search.candidates = candidate_models(train, resources.pool.names)
    plans = candidate_plans(search.candidates)
    search.plans = len(plans)
    # A fixed sample (by a hash of the id): the same queries screen every plan.
    order = sorted(range(len(train)), key=lambda i: fold_of(train[i].record.id, 1_000_003))
    sample = [train[i] for i in order[:SCREEN_QUERIES]]
    search.screened_on = len(sample)
    log(
        f"fusion: {len(plans)} plans over {', '.join(search.candidates)}; screening on "
        f"{len(sample):,} cross-fitted train queries"
    )

    def build(plan: Plan, signals: Sequence[QuerySignals], model: FusionModel) -> PlanTraces:
        return PlanTraces.build(plan, signals, resources, taxonomy_threshold, settings, model)

    train_goals = goals_for(sample, best_single)
    scores: dict[str, list[tuple[float, int]]] = {g.name: [] for g in train_goals}
    for index, plan in enumerate(plans):
        traces = build(plan, sample, raw)
        points = traces.curve(threshold_grid(traces.confidences(), SCREEN_THRESHOLDS))
        for goal in train_goals:
            point = best_point(points, goal)
            if point is not None:
                key = point.accuracy if goal.min_accuracy is None else -point.cost_per_1k
                scores[goal.name].append((key, index))
    search.seconds["screen"] = time.perf_counter() - started

    full_goals = goals_for(train, best_single)
    chosen_plans: dict[str, Plan] = {}
    for goal in full_goals:
        ranked = sorted(scores[goal.name], reverse=True)[:SHORTLIST]
        if not ranked:  # nothing met the goal on the sample: its closest, most accurate
            ranked = sorted(scores["max"], reverse=True)[:SHORTLIST]
        best_key: tuple[int, float, float] | None = None
        best_plan: Plan | None = None
        for _, index in ranked:
            traces = build(plans[index], train, raw)
            points = traces.curve(threshold_grid(traces.confidences(), FULL_THRESHOLDS))
            key = _rank(points, goal)
            if best_key is None or key > best_key:
                best_key, best_plan = key, plans[index]
        assert best_plan is not None
        chosen_plans[goal.name] = best_plan
        search.shortlist[goal.name] = [describe(plans[i]) for _, i in ranked]
    search.seconds["plans"] = time.perf_counter() - started

    # One calibrator for the router, on the chosen plans' cross-fitted train traces.
    distinct = {describe(p): p for p in chosen_plans.values()}
    union = [build(p, train, raw) for p in distinct.values()]
    model = _calibrate(union, raw)
    search.seconds["calibrate"] = time.perf_counter() - started

    chosen = []
    selection_goals = goals_for([*train, *validation], best_single)

    def thresholds(plan: Plan) -> tuple[list[tuple[Point, Point]], list[Point]]:
        on_train = build(plan, train, model)
        on_val = build(plan, validation, model)
        grid = threshold_grid(np.concatenate([on_train.confidences(), on_val.confidences()]), 60)
        pairs = [(on_train.point(t), on_val.point(t)) for t in grid]
        return pairs, [_merge(pair) for pair in pairs]

    def fallback_without(goal: Goal, plan: Plan, without: str) -> Fallback | None:
        """The screening's best plan for `goal` without `without`, at its threshold."""
        ranked = sorted(scores[goal.name], reverse=True) or sorted(scores["max"], reverse=True)
        other = next((plans[i] for _, i in ranked if without not in plan_models(plans[i])), None)
        if other is None:
            return None
        _, merged = thresholds(other)
        point = best_point(merged, goal) or max(merged, key=lambda p: (p.accuracy, -p.cost_per_1k))
        return Fallback(without, other, point.threshold, point)

    for goal, plan in zip(selection_goals, chosen_plans.values(), strict=True):
        pairs, merged = thresholds(plan)
        note = ""
        point = best_point(merged, goal)
        if point is None and goal.name == "cheap":
            _, cost = single_figures([*train, *validation], best_single)
            fallback = Goal("cheap", max_cost_per_1k=CHEAP_COST_SHARE * cost)
            point = best_point(merged, fallback)
            note = (
                f"no threshold reached the best single model's accuracy: the most accurate "
                f"at <= {CHEAP_COST_SHARE}x its cost"
            )
        if point is None:
            point = max(merged, key=lambda p: (p.accuracy, -p.cost_per_1k))
            note = "goal out of reach at selection: the most accurate point"
        at = merged.index(point)
        fallbacks = tuple(
            f
            for m in sorted(plan_models(plan))
            if (f := fallback_without(goal, plan, m)) is not None
        )
        chosen.append(
            Chosen(
                goal.name,
                goal,
                plan,
                point.threshold,
                point,
                pairs[at][0],
                pairs[at][1],
                note,
                fallbacks,
            )
        )
    search.seconds["thresholds"] = time.perf_counter() - started
    return model, chosen, search


def _rank(points: Sequence[Point], goal: Goal) -> tuple[int, float, float]:
    """How well a plan's curve serves a goal (larger is better): plans that meet it first,
    then by what the goal asks (accuracy, or low cost), else by their best accuracy."""
    point = best_point(points, goal)
    if point is None:
        top = max(points, key=lambda p: (p.accuracy, -p.cost_per_1k))
        return (0, top.accuracy, -top.cost_per_1k)
    if goal.min_accuracy is not None:
        return (1, -point.cost_per_1k, point.accuracy)
    return (1, point.accuracy, -point.cost_per_1k)


def _calibrate(union: Sequence[PlanTraces], raw: FusionModel) -> FusionModel:
    if len(union) == 1:
        return fit_calibrator(union[0])
    signals = [s for t in union for s in t.signals]
    views = [v for t in union for v in t.views]
    combined = PlanTraces(union[0].plan, signals, views, raw, union[0].settings)
    return fit_calibrator(combined)
