"""A stream run as figures: windowed accuracy and cost against the static router, the best
single model and the oracle; cumulative regret; model shares; for drift, how fast the
degraded model loses its traffic. Written as markdown, JSON and a plot."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emafusion.evals import stream_targets
from emafusion.evals.stream import Step, StreamRun
from emafusion.stores.atomic import write_text_atomic

# Accuracy within this of static, cost within this ratio of it: the bar for
# judged-only learning ("never worse than static").
ACCURACY_SLACK = 0.003
COST_SLACK = 1.05
HALVING_TARGET = 300  # queries after T within which the degraded model's share should halve


def _correct(steps: Sequence[Step]) -> np.ndarray:
    return np.array([s.correct for s in steps], dtype=float)


def _cost(steps: Sequence[Step]) -> np.ndarray:
    return np.array([s.cost_usd for s in steps], dtype=float)


def _shares(steps: Sequence[Step]) -> dict[str, float]:
    counts = Counter(s.model or "(none)" for s in steps)
    return {m: round(n / len(steps), 4) for m, n in counts.most_common()}


def model_share(steps: Sequence[Step], model: str) -> float:
    return sum(1 for s in steps if s.model == model) / len(steps) if steps else 0.0


def windows(run: StreamRun) -> list[dict[str, Any]]:
    """Per window of the stream: each router's accuracy and USD per 1k queries, the
    learning router's cumulative regret vs the oracle at the window's end, its shares."""
    refs, size = run.references, run.settings.window
    learn_c, learn_k = _correct(run.learning), _cost(run.learning)
    static_c, static_k = _correct(run.static), _cost(run.static)
    regret = np.cumsum(refs.oracle_correct - learn_c)
    static_regret = np.cumsum(refs.oracle_correct - static_c)
    out = []
    for start in range(0, len(run.stream), size):
        end = min(start + size, len(run.stream))
        part = slice(start, end)
        row: dict[str, Any] = {
            "start": start,
            "end": end,
            "learning_accuracy": float(learn_c[part].mean()),
            "learning_cost_per_1k": 1000.0 * float(learn_k[part].mean()),
            "static_accuracy": float(static_c[part].mean()),
            "static_cost_per_1k": 1000.0 * float(static_k[part].mean()),
            "best_single_accuracy": float(refs.best_correct[part].mean()),
            "best_single_cost_per_1k": 1000.0 * float(refs.best_cost[part].mean()),
            "oracle_accuracy": float(refs.oracle_correct[part].mean()),
            "oracle_cost_per_1k": 1000.0 * float(refs.oracle_cost[part].mean()),
            "cumulative_regret": float(regret[end - 1]),
            "static_cumulative_regret": float(static_regret[end - 1]),
            "learning_shares": _shares(run.learning[part]),
            "feedback_sent": sum(1 for s in run.learning[part] if s.feedback),
        }
        tracked = run.drift_model or run.new_model
        if tracked is not None:
            row["tracked_share_learning"] = model_share(run.learning[part], tracked)
            row["tracked_share_static"] = model_share(run.static[part], tracked)
        out.append(row)
    return out


def halving(run: StreamRun, span: int = 50) -> dict[str, Any] | None:
    """How many queries after T the degraded model's share (over the last `span` queries,
    all after T) first falls to half its share over the `span` queries before T."""
    if run.drift_model is None or run.drift_at is None:
        return None
    t, model = run.drift_at, run.drift_model
    before = model_share(run.learning[max(0, t - span) : t], model)
    found = None
    for n in range(span, len(run.learning) - t + 1):
        if model_share(run.learning[t + n - span : t + n], model) <= before / 2:
            found = n
            break
    after = run.learning[t : t + HALVING_TARGET]
    return {
        "share_before": round(before, 4),
        "share_first_300_after": round(model_share(after, model), 4),
        "static_share_first_300_after": round(
            model_share(run.static[t : t + HALVING_TARGET], model), 4
        ),
        "halved_after_queries": found,
        "span": span,
        "target_queries": HALVING_TARGET,
        "meets_target": found is not None and found <= HALVING_TARGET,
    }


def summary(run: StreamRun) -> dict[str, Any]:
    refs = run.references
    learn_c, static_c = _correct(run.learning), _correct(run.static)
    learn_k, static_k = _correct_cost(run)
    out: dict[str, Any] = {
        "dataset": run.dataset,
        "scenario": run.settings.scenario,
        "feedback": run.settings.feedback,
        "seed": run.settings.seed,
        "queries": len(run.stream),
        "window": run.settings.window,
        "concurrency": run.settings.concurrency,
        "cost_basis": refs.cost_basis,
        "best_single": refs.best,
        "learning": {"accuracy": float(learn_c.mean()), "cost_per_1k": learn_k},
        "static": {"accuracy": float(static_c.mean()), "cost_per_1k": static_k},
        "best_single_overall": {
            "accuracy": float(refs.best_correct.mean()),
            "cost_per_1k": 1000.0 * float(refs.best_cost.mean()),
        },
        "oracle": {
            "accuracy": float(refs.oracle_correct.mean()),
            "cost_per_1k": 1000.0 * float(refs.oracle_cost.mean()),
        },
        "regret_vs_oracle": float((refs.oracle_correct - learn_c).sum()),
        "static_regret_vs_oracle": float((refs.oracle_correct - static_c).sum()),
        "memory_queries_before": run.memory_before,
        "memory_queries_after": run.memory_after,
        "static_memory_unchanged": run.static_memory_unchanged,
        "feedback_sent": sum(1 for s in run.learning if s.feedback),
        "windows": windows(run),
    }
    rows = out["windows"]
    out["never_worse_than_static"] = {
        "worst_accuracy_gap": min(r["learning_accuracy"] - r["static_accuracy"] for r in rows),
        "worst_cost_ratio": max(
            r["learning_cost_per_1k"] / r["static_cost_per_1k"] if r["static_cost_per_1k"] else 1.0
            for r in rows
        ),
    }
    gap = out["never_worse_than_static"]
    gap["meets_target"] = (
        gap["worst_accuracy_gap"] >= -ACCURACY_SLACK and gap["worst_cost_ratio"] <= COST_SLACK
    )
    if run.drift_model is not None:
        out["drift"] = {
            "model": run.drift_model,
            "at_query": run.drift_at,
            "share": run.settings.drift_share,
            "degraded_queries": len(run.degraded_ids),
            **(halving(run) or {}),
        }
    if run.new_model is not None and run.drift_at is not None:
        t, model = run.drift_at, run.new_model
        out["new_model"] = {
            "model": model,
            "at_query": t,
            "share_after_learning": round(model_share(run.learning[t:], model), 4),
            "share_after_static": round(model_share(run.static[t:], model), 4),
            "accuracy_after_learning": float(learn_c[t:].mean()),
            "accuracy_after_static": float(static_c[t:].mean()),
        }
    for key, figures in (
        ("cold", stream_targets.cold(run)),
        ("new_model_target", stream_targets.new_model(run)),
        ("unseen_category", stream_targets.unseen_category(run)),
    ):
        if figures is not None:
            out[key] = figures
    if run.settings.context:
        out["context"] = dict(run.settings.context)
    return out


def _correct_cost(run: StreamRun) -> tuple[float, float]:
    return 1000.0 * float(_cost(run.learning).mean()), 1000.0 * float(_cost(run.static).mean())


def markdown(results: dict[str, Any]) -> str:
    r = results
    tracked = r["drift"]["model"] if "drift" in r else r.get("new_model", {}).get("model")
    lines = [
        f"# Stream: {r['dataset']}, scenario `{r['scenario']}`, feedback {r['feedback']:.0%}",
        "",
        f"{r['queries']:,} validation + test queries in seed {r['seed']}'s order, windows of "
        f"{r['window']}; batches of {r['concurrency']} (each sees what the ones before it "
        f"recorded). Cost: {r['cost_basis']}, per 1k queries. Best single model (chosen on "
        f"train): {r['best_single']}. Learning: recording on; static: the same router with "
        f"recording off.",
        "",
        "| queries | learning acc | static acc | best single acc | oracle acc | learning "
        "cost/1k | static cost/1k | best single cost/1k | oracle cost/1k | cum. regret | "
        "static cum. regret |" + (f" {tracked} share learning | static |" if tracked else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if tracked else ""),
    ]
    for w in r["windows"]:
        line = (
            f"| {w['start']}-{w['end']} | {w['learning_accuracy']:.4f} | "
            f"{w['static_accuracy']:.4f} | {w['best_single_accuracy']:.4f} | "
            f"{w['oracle_accuracy']:.4f} | {w['learning_cost_per_1k']:.4f} | "
            f"{w['static_cost_per_1k']:.4f} | {w['best_single_cost_per_1k']:.4f} | "
            f"{w['oracle_cost_per_1k']:.4f} | {w['cumulative_regret']:.1f} | "
            f"{w['static_cumulative_regret']:.1f} |"
        )
        if tracked:
            line += f" {w['tracked_share_learning']:.3f} | {w['tracked_share_static']:.3f} |"
        lines.append(line)
    lines += [
        "",
        f"Whole stream: learning {r['learning']['accuracy']:.4f} at "
        f"{r['learning']['cost_per_1k']:.4f}/1k; static {r['static']['accuracy']:.4f} at "
        f"{r['static']['cost_per_1k']:.4f}/1k; best single "
        f"{r['best_single_overall']['accuracy']:.4f} at "
        f"{r['best_single_overall']['cost_per_1k']:.4f}/1k; oracle {r['oracle']['accuracy']:.4f} "
        f"at {r['oracle']['cost_per_1k']:.4f}/1k. Regret vs oracle: learning "
        f"{r['regret_vs_oracle']:.1f}, static {r['static_regret_vs_oracle']:.1f} queries.",
        f"Memory: {r['memory_queries_before']:,} queries before, {r['memory_queries_after']:,} "
        f"after; ground truth sent for {r['feedback_sent']:,} answers; static run left the "
        f"memory unchanged: {r['static_memory_unchanged']}.",
    ]
    gap = r["never_worse_than_static"]
    target = "the target" if r["scenario"] == "warm" else "for information (warm's target)"
    lines.append(
        f"Never worse than static, {target} (per window, acc >= static - "
        f"{100 * ACCURACY_SLACK:.1f} pp, cost <= static x {COST_SLACK}): worst accuracy gap "
        f"{100 * gap['worst_accuracy_gap']:+.2f} pp, worst cost ratio "
        f"{gap['worst_cost_ratio']:.3f}: "
        f"{'met' if gap['meets_target'] else 'NOT met'}."
    )
    if "drift" in r:
        d = r["drift"]
        halved = d["halved_after_queries"]
        lines.append(
            f"Drift: {d['model']} wrong on {d['degraded_queries']:,} queries from query "
            f"{d['at_query']} (share {d['share']:.0%}). Its share of the learning router's "
            f"answers: {d['share_before']:.3f} over the {d['span']} queries before T, "
            f"{d['share_first_300_after']:.3f} over the {d['target_queries']} after (static: "
            f"{d['static_share_first_300_after']:.3f}); halved (over {d['span']} queries) "
            + (f"{halved} queries after T" if halved is not None else "never")
            + f": target within {d['target_queries']} "
            f"{'met' if d['meets_target'] else 'NOT met'}."
        )
    if "new_model" in r:
        n = r["new_model"]
        lines.append(
            f"New model: {n['model']} joined at query {n['at_query']} with no history; its share "
            f"of the answers after: learning {n['share_after_learning']:.3f}, static "
            f"{n['share_after_static']:.3f}; accuracy after: learning "
            f"{n['accuracy_after_learning']:.4f}, static {n['accuracy_after_static']:.4f}."
        )
    lines += stream_targets.markdown_lines(r)
    last = r["windows"][-1]["learning_shares"]
    lines.append(
        "Learning router's shares in the last window: "
        + ", ".join(f"{m} {s:.3f}" for m, s in last.items())
    )
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ws = results["windows"]
    x = [w["end"] for w in ws]
    fig, (acc, cost, shares) = plt.subplots(3, 1, figsize=(8, 9.5), sharex=True)
    for key, label in (
        ("learning", "learning router"),
        ("static", "static router"),
        ("best_single", f"best single ({results['best_single']})"),
        ("oracle", "oracle"),
    ):
        acc.plot(x, [w[f"{key}_accuracy"] for w in ws], marker="o", label=label)
        cost.plot(x, [w[f"{key}_cost_per_1k"] for w in ws], marker="o", label=label)
    event = results.get("drift") or results.get("new_model")
    if event:
        for ax in (acc, cost, shares):
            ax.axvline(event["at_query"], color="grey", linestyle="--")
    models = sorted({m for w in ws for m in w["learning_shares"]})
    for model in models:
        shares.plot(x, [w["learning_shares"].get(model, 0.0) for w in ws], marker=".", label=model)
    shares.set_ylabel("learning router's share")
    shares.legend(fontsize=7)
    acc.set_ylabel(f"accuracy per {results['window']} queries")
    cost.set_ylabel(f"cost per 1k queries ({results['cost_basis']})")
    cost.set_yscale("log")
    shares.set_xlabel("queries into the stream")
    acc.legend(fontsize=8)
    acc.set_title(
        f"{results['dataset']} stream, {results['scenario']}, feedback {results['feedback']:.0%}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(results: dict[str, Any], out: Path) -> list[Path]:
    """<scenario>[-feedback-F].md, .json and .png in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    stem = results["scenario"]
    if results["feedback"]:
        stem += f"-feedback-{results['feedback']:g}"
    for key, value in sorted(results.get("context", {}).items()):
        stem += f"-{key.replace('_', '-')}-{value}"
    md, js, png = out / f"{stem}.md", out / f"{stem}.json", out / f"{stem}.png"
    write_text_atomic(md, markdown(results))
    write_text_atomic(js, json.dumps(results, indent=2) + "\n")
    plot(results, png)
    return [md, js, png]
