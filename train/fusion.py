"""Fitting fused, staged plans on cross-fitted train traces: candidate plans, the
calibrator of the fused confidence, and the operating point that meets a goal.

Every figure here is a replay through the decision policy (`policy.replay`) of views the
graph would record (`fusion_traces.plan_views`), so a plan chosen here is what the graph
does with it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from emafusion.graph.state import CascadeView
from emafusion.nodes import policy
from emafusion.nodes.policy import PolicySettings, StageSummary
from emafusion.nodes.resources import RouterResources
from emafusion.stores.fusion import AGREEMENT_FEATURES, FEATURES, FusionModel
from emafusion.train.combiner import fit_logistic
from emafusion.train.fusion_traces import Plan, QuerySignals, fold_of, plan_views

# Folds (over queries) of the cross-validation that picks the calibrator's features.
FEATURE_FOLDS = 5
# The feature sets the calibrator may use: the agreement pattern alone, or with the memory's
# per-query estimates. Cross-validated on train; where the memory features do not lower the
# held-out log loss they get no weight (the agreement calibrator, exactly).
FEATURE_SETS = {"agreement": AGREEMENT_FEATURES, "agreement + memory": FEATURES}


@dataclass(frozen=True)
class Point:
    threshold: float | None  # None: never stop early
    accuracy: float
    cost_per_1k: float
    models_called: float
    escalation_rate: float
    correct: np.ndarray = field(repr=False, compare=False)


@dataclass
class PlanTraces:
    """One plan's views for a set of queries, and their summaries under one fusion model."""

    plan: Plan
    signals: Sequence[QuerySignals]
    views: list[list[CascadeView]]
    model: FusionModel
    settings: PolicySettings
    summaries: list[list[StageSummary]] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        plan: Plan,
        signals: Sequence[QuerySignals],
        resources: RouterResources,
        taxonomy_threshold: float,
        settings: PolicySettings,
        model: FusionModel,
    ) -> PlanTraces:
        views = [plan_views(s, plan, resources, taxonomy_threshold) for s in signals]
        traces = cls(plan, signals, views, model, settings)
        traces.summarize()
        return traces

    def summarize(self) -> None:
        self.summaries = [
            [policy.summarize(v, self.settings, self.model) for v in query] for query in self.views
        ]

    def with_model(self, model: FusionModel) -> PlanTraces:
        traces = PlanTraces(self.plan, self.signals, self.views, model, self.settings)
        traces.summarize()
        return traces

    def point(self, threshold: float | None) -> Point:
        settings = policy.at_threshold(self.settings, threshold)
        correct = np.zeros(len(self.views))
        cost = np.zeros(len(self.views))
        calls = np.zeros(len(self.views))
        for i, (sig, views, summaries) in enumerate(
            zip(self.signals, self.views, self.summaries, strict=True)
        ):
            outcome = policy.replay(views, settings, self.model, summaries)
            correct[i] = sig.score(outcome.model)
            cost[i] = outcome.spent_usd
            calls[i] = outcome.attempts
        first = np.array([len(v[0]["attempts"]) if v else 0 for v in self.views])
        n = max(1, len(self.views))
        return Point(
            threshold,
            float(correct.sum() / n),
            float(cost.sum() / n) * 1000.0,
            float(calls.sum() / n),
            float((calls > first).sum() / n),
            correct,
        )

    def confidences(self) -> np.ndarray:
        values = [s.confidence for query in self.summaries for s in query]
        return np.array([v for v in values if v is not None], dtype=np.float64)

    def curve(self, thresholds: Sequence[float | None]) -> list[Point]:
        return [self.point(t) for t in thresholds]


def threshold_grid(confidences: np.ndarray, most: int = 60) -> list[float | None]:
    """Quantiles of the confidences seen, rounded to 3 places (a threshold is never tuned
    finer than the confidences can be trusted), and never stopping early."""
    if not len(confidences):
        return [None]
    values = np.unique(np.round(np.quantile(confidences, np.linspace(0.0, 1.0, most)), 3))
    return [float(v) for v in values] + [None]


# --- the calibrator ----------------------------------------------------------------------


def calibration_rows(traces: PlanTraces) -> tuple[np.ndarray, np.ndarray]:
    """(features, right) of the fused answer at every stage of every query."""
    x, y, _, _ = calibration_rows_by_query(traces)
    return x, y


def calibration_rows_by_query(
    traces: PlanTraces, n_folds: int = FEATURE_FOLDS
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """`calibration_rows`, each row's query fold (of `n_folds`) and its query's category."""
    x, y, folds, categories = [], [], [], []
    for sig, views in zip(traces.signals, traces.views, strict=True):
        for view in views:
            fused = policy.fuse(view, traces.model)
            if fused is None:
                continue
            x.append(fused.features)
            y.append(sig.score(view["attempts"][fused.chosen]["model"]) >= 0.5)
            folds.append(fold_of(sig.record.id, n_folds))
            categories.append(sig.record.category)
    return (
        np.asarray(x, dtype=np.float64).reshape(-1, len(FEATURES)),
        np.asarray(y, bool),
        np.asarray(folds, dtype=np.int64),
        categories,
    )


def _held_out_log_loss(x: np.ndarray, y: np.ndarray, folds: np.ndarray, l2: float) -> float:
    """Mean log loss of each fold's rows under the logistic fitted on the other folds."""
    loss = 0.0
    for f in range(FEATURE_FOLDS):
        held = folds == f
        if not held.any() or y[~held].all() or not y[~held].any():
            continue
        coef, intercept = fit_logistic(x[~held], y[~held], l2)
        z = x[held] @ coef + intercept
        # log(1 + e^-z) for the right answers, log(1 + e^z) for the wrong ones.
        loss += float(np.logaddexp(0.0, np.where(y[held], -z, z)).sum())
    return loss / len(y)


def fit_calibrator(traces: PlanTraces, l2: float = 1.0) -> FusionModel:
    """P(the fused answer is right | vote, agreement pattern and memory estimates), logistic,
    on these traces (cross-fitted train). Its features are chosen by cross-validation over
    the same rows (`FEATURE_SETS`, lower held-out log loss; ties: fewer features); a feature
    left out weighs zero."""
    x, y, folds, _ = calibration_rows_by_query(traces)
    if len(y) < 50 or y.all() or not y.any():
        return traces.model
    losses = {}
    for name, names in FEATURE_SETS.items():
        columns = [FEATURES.index(f) for f in names]
        losses[name] = _held_out_log_loss(x[:, columns], y, folds, l2)
    chosen = min(FEATURE_SETS, key=lambda n: (losses[n], len(FEATURE_SETS[n])))
    columns = [FEATURES.index(f) for f in FEATURE_SETS[chosen]]
    fitted, intercept = fit_logistic(x[:, columns], y, l2)
    if not (np.isfinite(fitted).all() and math.isfinite(intercept)):
        return traces.model
    coef = np.zeros(len(FEATURES))
    coef[columns] = fitted
    info = {
        "rows": int(len(y)),
        "right": float(y.mean()),
        "features": chosen,
        "held_out_log_loss": {n: round(v, 6) for n, v in losses.items()},
    }
    return replace(
        traces.model,
        coef=tuple(float(c) for c in coef),
        intercept=float(intercept),
        info={**traces.model.info, "calibrator": info},
    )


# --- plans -------------------------------------------------------------------------------


def candidate_models(
    signals: Sequence[QuerySignals], pool: Sequence[str], most: int = 5, within: float = 0.15
) -> list[str]:
    """The `most` most accurate models, and every model on the (cost, accuracy) frontier
    within `within` of the best accuracy (cheap but credible), cheapest first."""
    acc = {m: float(np.mean([s.score(m) for s in signals])) for m in pool}
    cost = {m: float(np.mean([s.costs.get(m, 0.0) for s in signals])) for m in pool}
    top = max(acc.values())
    chosen = sorted(pool, key=lambda m: -acc[m])[:most]
    for m in pool:
        dominated = any(acc[o] >= acc[m] and cost[o] <= cost[m] and o != m for o in pool)
        if not dominated and m not in chosen and acc[m] >= top - within:
            chosen.append(m)
    return sorted(chosen, key=lambda m: cost[m])


def candidate_plans(
    models: Sequence[str], first_stage_from: int = 3, first_stage_size: int = 3, tail: int = 2
) -> list[Plan]:
    """Plans of one parallel first stage (1 to `first_stage_size` of the cheapest
    `first_stage_from` candidates) followed by up to `tail` more models, cheapest first,
    one per stage."""
    plans: list[Plan] = []
    cheap = list(models[:first_stage_from])
    for size in range(1, first_stage_size + 1):
        for first in itertools.combinations(cheap, size):
            rest = [m for m in models if m not in first]
            for n in range(0, tail + 1):
                for later in itertools.combinations(rest, n):
                    stages = [list(first)] + [[m] for m in later]
                    if len(stages) == 1 and size == 1:
                        continue  # a single model: a baseline, not a plan
                    plans.append({"*": stages})
    return plans


@dataclass(frozen=True)
class Goal:
    name: str
    max_cost_per_1k: float | None = None  # most accurate within this cost
    min_accuracy: float | None = None  # cheapest reaching this accuracy


def meets(point: Point, goal: Goal) -> bool:
    if goal.max_cost_per_1k is not None and point.cost_per_1k > goal.max_cost_per_1k + 1e-12:
        return False
    return goal.min_accuracy is None or point.accuracy >= goal.min_accuracy - 1e-12


def best_point(points: Sequence[Point], goal: Goal) -> Point | None:
    """The goal's point: the cheapest meeting a minimum accuracy, else the most accurate
    meeting the cost limit (ties: cheaper)."""
    ok = [p for p in points if meets(p, goal)]
    if not ok:
        return None
    if goal.min_accuracy is not None:
        return min(ok, key=lambda p: (p.cost_per_1k, -p.accuracy))
    return max(ok, key=lambda p: (p.accuracy, -p.cost_per_1k))
