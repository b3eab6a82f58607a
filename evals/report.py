"""Writing an evaluation: results.json, a markdown table, and the cost-accuracy plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from emafusion.evals.metrics import upper_hull
from emafusion.stores.atomic import write_text_atomic


def _fmt(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    m = results["metrics"]
    lines = [
        f"### {results['dataset']}: {results['split']} split, {results['n']:,} queries "
        f"({results['population']})",
        "",
        f"Cost: {results['cost_basis']}, per 1k queries. Overhead: p50 router time per query "
        f"outside model calls, at concurrency {results['concurrency']}.",
        "",
        "| row | kind | accuracy | cost / 1k | models called | escalation | overhead ms |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        lines.append(
            f"| {row['name']} | {row['kind']} | {row['accuracy']:.4f} | "
            f"{row['cost_per_1k_usd']:.4f} | {row['models_called']:.2f} | "
            f"{row['escalation_rate']:.3f} | {_fmt(row['overhead_ms_p50'], 2)} |"
        )
    gain = m["gain_over_best_single"]
    cheap = m["cheap_gain_over_best_single"]
    lines += [
        "",
        f"- Full router vs best single ({results['best_single']}): "
        f"{100 * gain['mean']:+.2f} points (95% CI {100 * gain['ci95'][0]:+.2f} to "
        f"{100 * gain['ci95'][1]:+.2f}) at {m['cost_ratio_vs_best_single']:.2f}x its cost, "
        f"{m['cost_ratio_vs_average_model']:.2f}x the average model's.",
        f"- Cheap operating point: {100 * cheap['mean']:+.2f} points (95% CI "
        f"{100 * cheap['ci95'][0]:+.2f} to {100 * cheap['ci95'][1]:+.2f}) at "
        f"{m['cheap_cost_ratio_vs_best_single']:.2f}x the best single model's cost.",
        f"- APGR {m['apgr']:.3f}, CPT(50%) {m['cpt50']:.3f} ({m['weak_model']} -> "
        f"{m['strong_model']}; {m['definitions']['apgr_cpt']}).",
        f"- AIQ router {m['aiq_router']:.4f} vs zero router {m['aiq_zero_router']:.4f} "
        f"({m['definitions']['aiq']}).",
        "",
        "All queries (" + results["all_queries"]["population"] + "):",
        "",
        "| row | accuracy | cost / 1k |",
        "|---|---:|---:|",
    ]
    for row in results["all_queries"]["rows"]:
        lines.append(f"| {row['name']} | {row['accuracy']:.4f} | {row['cost_per_1k_usd']:.4f} |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    singles = [r for r in rows if r["kind"] == "single"]
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    xs = [r["cost_per_1k_usd"] for r in singles]
    ys = [r["accuracy"] for r in singles]
    ax.scatter(xs, ys, color="#6b7280", label="single models", zorder=3)
    for r in singles:
        ax.annotate(
            r["name"].split("/")[-1],
            (r["cost_per_1k_usd"], r["accuracy"]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
            color="#374151",
        )
    hull = upper_hull(list(zip(xs, ys, strict=True)))
    ax.plot(
        [p[0] for p in hull], [p[1] for p in hull], "--", color="#9ca3af", label="zero-router hull"
    )
    points = [(r["cost_per_1k_usd"], r["accuracy"]) for r in results["sweep"]]
    ax.scatter(
        [p[0] for p in points],
        [p[1] for p in points],
        s=6,
        color="#93c5fd",
        label="router settings (threshold x cost-weight sweep)",
        zorder=2,
    )
    frontier = upper_hull(points)
    ax.plot(
        [p[0] for p in frontier],
        [p[1] for p in frontier],
        "-o",
        color="#2563eb",
        markersize=4,
        label="router frontier",
    )
    for name, marker, color in (
        ("full (validation-chosen)", "*", "#dc2626"),
        ("full (cheap)", "P", "#16a34a"),
        ("disagreement baseline", "s", "#f59e0b"),
    ):
        row = next(r for r in rows if r["name"] == name)
        ax.scatter(
            [row["cost_per_1k_usd"]],
            [row["accuracy"]],
            marker=marker,
            s=120,
            color=color,
            label=name,
            zorder=4,
        )
    ax.set_xscale("log")
    ax.set_xlabel(f"cost per 1k queries ({results['cost_basis']}, log scale)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{results['dataset']} {results['split']} ({results['n']:,} queries)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_results(results: dict[str, Any], out: Path) -> list[Path]:
    json_path, md_path, png_path = out / "results.json", out / "results.md", out / "tradeoff.png"
    write_text_atomic(json_path, json.dumps(results, indent=2) + "\n")
    write_text_atomic(md_path, markdown(results))
    plot(results, png_path)
    return [json_path, md_path, png_path]
