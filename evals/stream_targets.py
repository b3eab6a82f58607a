"""The learning issue's adaptation figures for `cold`, `new-model` and `unseen-category`.

- cold: from query N on (1,000 on MMLU-Pro, 300 elsewhere), every window of the cold
  router within 2 pp of the warm router (learning under the same feedback).
- new-model: over the 300 queries after T, the joining model's share of the answers at
  least half its share in the warm run (where it was there from the start); regret there.
- unseen-category: on the withheld category's queries, in stream order, the first 100
  no more than 3 pp below always calling the strongest model (the most accurate on
  train), within 2 pp of the best single model from its 200th query on, and never dearer
  than always calling the strongest model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from emafusion.evals.stream import Step, StreamRun

COLD_WITHIN = 0.02
COLD_AFTER = {"mmlu-pro": 1000}
COLD_AFTER_DEFAULT = 300
NEW_MODEL_SPAN = 300
UNSEEN_FIRST, UNSEEN_AFTER = 100, 200
UNSEEN_FIRST_SLACK, UNSEEN_AFTER_SLACK = 0.03, 0.02


def _acc(steps: Sequence[Step]) -> float:
    return float(np.mean([s.correct for s in steps])) if steps else float("nan")


def _share(steps: Sequence[Step], model: str) -> float:
    return sum(1 for s in steps if s.model == model) / len(steps) if steps else 0.0


def cold(run: StreamRun) -> dict[str, Any] | None:
    if run.settings.scenario != "cold" or run.reference is None:
        return None
    after = COLD_AFTER.get(run.dataset, COLD_AFTER_DEFAULT)
    size = run.settings.window
    rows = []
    for start in range(0, len(run.stream), size):
        end = min(start + size, len(run.stream))
        rows.append(
            {
                "start": start,
                "end": end,
                "cold_accuracy": _acc(run.learning[start:end]),
                "warm_accuracy": _acc(run.reference[start:end]),
            }
        )
    judged = [r for r in rows if r["start"] >= after]
    worst = min((r["cold_accuracy"] - r["warm_accuracy"] for r in judged), default=None)
    return {
        "after_queries": after,
        "windows": rows,
        "worst_gap_after": worst,
        "warm_accuracy": _acc(run.reference),
        "meets_target": worst is not None and worst >= -COLD_WITHIN,
    }


def new_model(run: StreamRun) -> dict[str, Any] | None:
    if run.new_model is None or run.drift_at is None or run.reference is None:
        return None
    t, model = run.drift_at, run.new_model
    span = slice(t, t + NEW_MODEL_SPAN)
    learning, warm = run.learning[span], run.reference[span]
    share, warm_share = _share(learning, model), _share(warm, model)
    oracle = run.references.oracle_correct[span]
    return {
        "span": NEW_MODEL_SPAN,
        "share_learning": round(share, 4),
        "share_warm": round(warm_share, 4),
        "regret_vs_warm": float(sum(s.correct for s in warm) - sum(s.correct for s in learning)),
        "regret_vs_oracle": float(oracle.sum() - sum(s.correct for s in learning)),
        "accuracy_learning": _acc(learning),
        "accuracy_warm": _acc(warm),
        "meets_target": share >= warm_share / 2,
    }


def unseen_category(run: StreamRun) -> dict[str, Any] | None:
    if run.withheld is None:
        return None
    at = [i for i, r in enumerate(run.stream) if r.category == run.withheld]
    refs = run.references
    strongest_c = refs.best_correct[at]
    strongest_k = refs.best_cost[at]

    def figures(steps: Sequence[Step]) -> dict[str, Any]:
        mine = [steps[i] for i in at]
        first, later = mine[:UNSEEN_FIRST], mine[UNSEEN_AFTER:]
        cost = float(np.sum([s.cost_usd for s in mine]))
        return {
            "first_accuracy": _acc(first),
            "after_accuracy": _acc(later) if later else None,
            "cost_usd": cost,
        }

    learning, static = figures(run.learning), figures(run.static)
    first_ref = float(strongest_c[:UNSEEN_FIRST].mean())
    after_ref = float(strongest_c[UNSEEN_AFTER:].mean()) if len(at) > UNSEEN_AFTER else None
    strongest_cost = float(strongest_k.sum())
    first_ok = learning["first_accuracy"] >= first_ref - UNSEEN_FIRST_SLACK
    after_ok = (
        after_ref is not None
        and learning["after_accuracy"] is not None
        and learning["after_accuracy"] >= after_ref - UNSEEN_AFTER_SLACK
    )
    return {
        "category": run.withheld,
        "queries": len(at),
        "strongest": refs.best,
        "strongest_first_accuracy": first_ref,
        "strongest_after_accuracy": after_ref,
        "strongest_cost_usd": strongest_cost,
        "learning": learning,
        "static": static,
        "first_met": first_ok,
        "after_met": after_ok,
        "cost_met": learning["cost_usd"] <= strongest_cost,
        "meets_target": first_ok and after_ok and learning["cost_usd"] <= strongest_cost,
    }


def markdown_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    if c := results.get("cold"):
        gap = c["worst_gap_after"]
        lines.append(
            f"Cold vs warm (the warm router learning under the same feedback: "
            f"{c['warm_accuracy']:.4f} over the stream): per window "
            + ", ".join(
                f"{w['start']}-{w['end']} {w['cold_accuracy']:.4f}/{w['warm_accuracy']:.4f}"
                for w in c["windows"]
            )
            + f". Worst gap from query {c['after_queries']:,} on: "
            + (f"{100 * gap:+.2f} pp" if gap is not None else "no window")
            + f"; target within {100 * COLD_WITHIN:.0f} pp: "
            + ("met." if c["meets_target"] else "NOT met.")
        )
    if n := results.get("new_model_target"):
        lines.append(
            f"New model over the {n['span']} queries after T: share {n['share_learning']:.3f} "
            f"vs {n['share_warm']:.3f} in the warm run (target: at least half, "
            f"{'met' if n['meets_target'] else 'NOT met'}); accuracy {n['accuracy_learning']:.4f} "
            f"vs warm {n['accuracy_warm']:.4f}; regret there {n['regret_vs_warm']:.0f} queries vs "
            f"warm, {n['regret_vs_oracle']:.0f} vs the oracle."
        )
    if u := results.get("unseen_category"):
        after = u["strongest_after_accuracy"]
        lines.append(
            f"Unseen category `{u['category']}` ({u['queries']} stream queries; strongest "
            f"model {u['strongest']}): first {UNSEEN_FIRST} accuracy learning "
            f"{u['learning']['first_accuracy']:.4f} / static {u['static']['first_accuracy']:.4f}"
            f" vs strongest {u['strongest_first_accuracy']:.4f} (target >= strongest - 3 pp: "
            f"{'met' if u['first_met'] else 'NOT met'}); from its {UNSEEN_AFTER}th query on "
            + (
                f"learning {u['learning']['after_accuracy']:.4f} vs {after:.4f} (target within "
                f"2 pp: {'met' if u['after_met'] else 'NOT met'})"
                if after is not None
                else f"no figure (fewer than {UNSEEN_AFTER} queries)"
            )
            + f"; cost learning ${u['learning']['cost_usd']:.4f} / static "
            f"${u['static']['cost_usd']:.4f} vs strongest ${u['strongest_cost_usd']:.4f} "
            f"({'met' if u['cost_met'] else 'NOT met'})."
        )
    return lines
