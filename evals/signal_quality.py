"""How well the stopping signal separates right from wrong answers, per level and category.

The signal is the one the policy stops on: the fused answer's calibrated P(right)
(`policy.fuse`, the evaluation's fusion model) after each stage of the default preset's
plan. Its AUROC against whether that fused answer is right says where the cascade can
stop safely and where it cannot: an AUROC near 0.5 is a level where the router cannot tell
a right answer from a wrong one, and escalating there is a guess paid at full price.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from emafusion.nodes import policy
from emafusion.stores.metrics import auroc
from emafusion.train.fusion import PlanTraces

MIN_ROWS = 20  # fewer answers (or no right or no wrong one): no AUROC is printed


def _row(name: str, confidences: Sequence[float], right: Sequence[bool]) -> dict[str, Any]:
    y = np.asarray(right, dtype=bool)
    x = np.asarray(confidences, dtype=np.float64)
    separable = len(y) >= MIN_ROWS and y.any() and not y.all()
    return {
        "group": name,
        "n": int(len(y)),
        "right": float(y.mean()) if len(y) else float("nan"),
        "mean_confidence": float(x.mean()) if len(x) else float("nan"),
        "auroc": float(auroc(x, y)) if separable else None,
    }


def stop_signal_quality(traces: PlanTraces) -> dict[str, list[dict[str, Any]]]:
    """AUROC of the fused confidence per level (stage reached) and per category (every
    level pooled), on the queries `traces` holds."""
    by_level: dict[int, tuple[list[float], list[bool]]] = defaultdict(lambda: ([], []))
    by_category: dict[str, tuple[list[float], list[bool]]] = defaultdict(lambda: ([], []))
    for signals, views in zip(traces.signals, traces.views, strict=True):
        for level, view in enumerate(views, start=1):
            fused = policy.fuse(view, traces.model)
            if fused is None:
                continue
            right = signals.score(view["attempts"][fused.chosen]["model"]) >= 0.5
            for bucket in (by_level[level], by_category[signals.record.category]):
                bucket[0].append(fused.confidence)
                bucket[1].append(right)
    everything = [c for xs, _ in by_level.values() for c in xs]
    all_right = [r for _, ys in by_level.values() for r in ys]
    return {
        "levels": [_row(f"level {k}", *by_level[k]) for k in sorted(by_level)]
        + [_row("all levels", everything, all_right)],
        "categories": [_row(c, *by_category[c]) for c in sorted(by_category)],
    }


def signal_quality_markdown(quality: dict[str, Any], plan: str) -> list[str]:
    def table(title: str, rows: list[dict[str, Any]]) -> list[str]:
        out = [
            f"| {title} | answers | right | mean confidence | AUROC |",
            "|---|---:|---:|---:|---:|",
        ]
        for row in rows:
            value = "n/a" if row["auroc"] is None else f"{row['auroc']:.4f}"
            out.append(
                f"| {row['group']} | {row['n']:,} | {row['right']:.3f} "
                f"| {row['mean_confidence']:.3f} | {value} |"
            )
        return out

    lines = [
        f"Stopping signal (the default plan {plan}: the fused answer's calibrated P(right) after "
        "each stage, against whether that answer is right; every stage replayed, test split):",
        "",
        *table("level", quality["levels"]),
        "",
        *table("category", quality["categories"]),
    ]
    weak = [
        r["group"]
        for r in [*quality["levels"], *quality["categories"]]
        if r["auroc"] is not None and r["auroc"] < 0.7
    ]
    if weak:
        lines += ["", f"Weak separation (AUROC < 0.7): {', '.join(weak)}."]
    return lines
