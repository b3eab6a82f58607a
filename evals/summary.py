"""The evaluation's figures as one JSON-ready summary: rows, the presets against the best
single model (bootstrap CI), AIQ against the zero router, where the frontier stands against
the zero-router hull, selection-time estimates beside test, per-category figures."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from emafusion.evals.baselines import Row
from emafusion.evals.metrics import aiq, apgr, bootstrap_gain, cpt, hull_value, upper_hull
from emafusion.stores.fusion import FEATURES, FusionModel
from emafusion.stores.recordings import Record
from emafusion.train.fusion_search import Chosen, SearchLog, describe


def frontier_gaps(
    points: Sequence[tuple[float, float]], singles: Sequence[tuple[float, float]]
) -> list[tuple[float, float, float]]:
    """Where the router's frontier lies under the zero-router hull: (cost, router accuracy,
    hull accuracy) of each frontier point below it."""
    hull = upper_hull(list(singles))
    below = []
    for cost, accuracy in upper_hull(list(points)):
        reference = hull_value(hull, cost)
        if np.isfinite(reference) and accuracy < reference - 1e-9:
            below.append((cost, accuracy, reference))
    return below


def summarize(
    *,
    dataset: str,
    split: str,
    test: Sequence[Record],
    test_all: Sequence[Record],
    rows: list[Row],
    best: str,
    chosen: Sequence[Chosen],
    sweep: Sequence[Row],
    everything: Row,
    all_singles: Sequence[Row],
    recorded_cost: bool,
    per_category: list[dict[str, Any]],
    search: SearchLog,
    drift: float,
    concurrency: int,
    fusion: FusionModel,
) -> dict[str, Any]:
    singles = [r for r in rows if r.kind == "single"]
    best_row = next(r for r in singles if r.name == best)
    single_points = [r.point for r in singles]
    presets = {c.name: next(r for r in rows if r.name == f"emafusion {c.name}") for c in chosen}
    average_cost = float(np.mean([r.cost_per_1k_usd for r in singles]))
    weak = min(singles, key=lambda r: (r.cost_per_1k_usd, -r.accuracy))
    router_points = [r.point for r in sweep] + [r.point for r in presets.values()]
    hull = upper_hull(single_points)
    agreement = next(r for r in rows if r.name == "agreement cascade")
    preset_metrics = {}
    for name, row in presets.items():
        gain, low, high = bootstrap_gain(row.correct, best_row.correct)
        c = next(c for c in chosen if c.name == name)
        preset_metrics[name] = {
            "plan": describe(c.plan),
            "threshold": c.threshold,
            "gain_over_best_single": {"mean": gain, "ci95": [low, high]},
            "cost_ratio_vs_best_single": row.cost_per_1k_usd / best_row.cost_per_1k_usd,
            "cost_ratio_vs_average_model": row.cost_per_1k_usd / average_cost,
            "zero_router_hull_at_its_cost": hull_value(hull, row.cost_per_1k_usd),
            "above_agreement_cascade": row.accuracy > agreement.accuracy,
            "selection": {
                "accuracy": c.selection.accuracy,
                "cost_per_1k_usd": c.selection.cost_per_1k,
                "on": "cross-fitted train + validation",
            },
            "validation": {
                "accuracy": c.validation.accuracy,
                "cost_per_1k_usd": c.validation.cost_per_1k,
            },
            "selection_minus_test_pp": 100.0 * (c.selection.accuracy - row.accuracy),
            "note": c.note,
        }
    below = frontier_gaps(router_points, single_points)
    cost_label = "recorded USD" if recorded_cost else "list prices x estimated tokens (USD)"
    return {
        "dataset": dataset,
        "split": split,
        "population": "test queries with a recording from every pool model",
        "n": len(test),
        "n_all_queries": len(test_all),
        "cost_basis": cost_label,
        "best_single": best,
        "best_single_chosen_on": "train + validation",
        "concurrency": concurrency,
        "rows": [r.as_json() for r in rows],
        "presets": preset_metrics,
        "per_category": per_category,
        "all_queries": {
            "population": "every test query; a missing recording is a provider failure "
            "(the router fails over; a single-model row counts it wrong)",
            "rows": [r.as_json() for r in [*all_singles, everything]],
        },
        "sweep": [r.as_json() for r in sweep],
        "metrics": {
            "aiq_router": aiq(router_points, single_points),
            "aiq_zero_router": aiq(single_points, single_points),
            "apgr": apgr(router_points, weak.point, best_row.point),
            "cpt50": cpt(router_points, weak.point, best_row.point, 0.5),
            "frontier_points_under_zero_router_hull": [
                {"cost_per_1k_usd": c, "accuracy": a, "hull_accuracy": h} for c, a, h in below
            ],
            "weak_model": weak.name,
            "strong_model": best,
            "replay_vs_graph_max_difference": drift,
            "definitions": {
                "apgr_cpt": "RouteLLM's, on normalized cost (cost - weak) / (strong - weak) "
                "in place of the share of calls to the strong model",
                "aiq": "RouterBench's, mean of the non-decreasing concave hull over the single "
                "models' cost range, cost in USD per 1k queries",
            },
        },
        "fusion_model": {
            "features": list(FEATURES),
            "coef": list(fusion.coef),
            "intercept": fusion.intercept,
            "smoothing": fusion.smoothing,
            # Which feature set the cross-validation on train kept, and its held-out losses.
            "calibrator": fusion.info.get("calibrator"),
        },
        "search": {
            "candidates": search.candidates,
            "plans": search.plans,
            "screened_on_train_queries": search.screened_on,
            "shortlist": search.shortlist,
            "seconds": {k: round(v, 1) for k, v in search.seconds.items()},
        },
    }
