"""Writing an evaluation: results.json, a markdown table, and the cost-accuracy plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from emafusion.evals.metrics import upper_hull
from emafusion.evals.signal_quality import signal_quality_markdown
from emafusion.stores.atomic import write_text_atomic


def _fmt(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    m = results["metrics"]
    lines = [
        f"### {results['dataset']}: {results['split']} split, {results['n']:,} queries "
        f"({results['population']})",
        "",
        f"Cost: {results['cost_basis']}, per 1k queries. Best single model "
        f"({results['best_single']}) chosen on {results['best_single_chosen_on']}. "
        f"Selection: where each preset was chosen (cross-fitted train + validation). "
        f"Overhead: p50 router time per query outside model calls, at concurrency "
        f"{results['concurrency']}.",
        "",
        "| row | kind | accuracy | cost / 1k | models called | escalation | selection acc | "
        "selection cost | overhead ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        lines.append(
            f"| {row['name']} | {row['kind']} | {row['accuracy']:.4f} | "
            f"{row['cost_per_1k_usd']:.4f} | {row['models_called']:.2f} | "
            f"{row['escalation_rate']:.3f} | {_fmt(row.get('selection_accuracy'), 4)} | "
            f"{_fmt(row.get('selection_cost_per_1k_usd'), 4)} | "
            f"{_fmt(row['overhead_ms_p50'], 2)} |"
        )
    lines.append("")
    for name, p in results["presets"].items():
        gain = p["gain_over_best_single"]
        lines.append(
            f"- **{name}** ({p['plan']}; threshold "
            f"{'never stop' if p['threshold'] is None else round(p['threshold'], 4)}): "
            f"{100 * gain['mean']:+.2f} points vs {results['best_single']} (95% CI "
            f"{100 * gain['ci95'][0]:+.2f} to {100 * gain['ci95'][1]:+.2f}) at "
            f"{p['cost_ratio_vs_best_single']:.2f}x its cost "
            f"({p['cost_ratio_vs_average_model']:.2f}x the average model's); zero-router hull "
            f"at that cost {p['zero_router_hull_at_its_cost']:.4f}; "
            f"{'above' if p['above_agreement_cascade'] else 'not above'} the agreement "
            f"cascade; selection estimate {p['selection']['accuracy']:.4f} at "
            f"${p['selection']['cost_per_1k_usd']:.4f}/1k "
            f"(selection - test {p['selection_minus_test_pp']:+.2f} points)"
            + (f". {p['note']}" if p["note"] else "")
        )
    under = m["frontier_points_under_zero_router_hull"]
    lines += [
        f"- AIQ router {m['aiq_router']:.4f} vs zero router {m['aiq_zero_router']:.4f} "
        f"({m['definitions']['aiq']}); APGR {m['apgr']:.3f}, CPT(50%) {m['cpt50']:.3f} "
        f"({m['weak_model']} -> {m['strong_model']}).",
        f"- Router frontier under the zero-router hull at {len(under)} point(s)"
        + (
            ": "
            + ", ".join(
                f"${u['cost_per_1k_usd']:.3f}/1k {u['accuracy']:.4f} < {u['hull_accuracy']:.4f}"
                for u in under
            )
            if under
            else ""
        )
        + ".",
        f"- The policy's replay of the test queries matches the graph runs within "
        f"{m['replay_vs_graph_max_difference']:.1e}.",
        "",
        "Per category (default preset vs the best single model):",
        "",
        "| category | n | default | best single | difference |",
        "|---|---:|---:|---:|---:|",
    ]
    for c in results["per_category"]:
        lines.append(
            f"| {c['category']} | {c['n']} | {c['router_accuracy']:.4f} | "
            f"{c['best_single_accuracy']:.4f} | "
            f"{100 * (c['router_accuracy'] - c['best_single_accuracy']):+.2f} |"
        )
    if "stop_signal" in results:
        lines += [
            "",
            *signal_quality_markdown(results["stop_signal"], results["stop_signal"]["plan"]),
        ]
    lines += [
        "",
        "All queries (" + results["all_queries"]["population"] + "):",
        "",
        "| row | accuracy | cost / 1k |",
        "|---|---:|---:|",
    ]
    for row in results["all_queries"]["rows"]:
        lines.append(f"| {row['name']} | {row['accuracy']:.4f} | {row['cost_per_1k_usd']:.4f} |")
    if "phases_s" in results:
        lines += [
            "",
            "Wall time per phase: "
            + ", ".join(f"{k} {v:.1f} s" for k, v in results["phases_s"].items())
            + ".",
        ]
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
        label="router thresholds (the presets' plans)",
        zorder=2,
    )
    frontier = upper_hull(
        points
        + [
            (r["cost_per_1k_usd"], r["accuracy"])
            for r in rows
            if r["name"].startswith("emafusion ")
        ]
    )
    ax.plot(
        [p[0] for p in frontier],
        [p[1] for p in frontier],
        "-o",
        color="#2563eb",
        markersize=4,
        label="router frontier",
    )
    marks = {
        "emafusion default": ("*", "#dc2626"),
        "emafusion cheap": ("P", "#16a34a"),
        "emafusion max": ("X", "#7c3aed"),
        "agreement cascade": ("s", "#f59e0b"),
    }
    for row in rows:
        if row["name"] in marks or row["name"].startswith("vote of the top"):
            marker, color = marks.get(row["name"], ("D", "#0891b2"))
            ax.scatter(
                [row["cost_per_1k_usd"]],
                [row["accuracy"]],
                marker=marker,
                s=120,
                color=color,
                label=row["name"],
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
