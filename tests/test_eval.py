"""The evaluation end to end on a small slice, and its threshold read-off."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest

from emafusion.graph.cli import main
from emafusion.graph.context import Context
from emafusion.graph.eval_metrics import aiq, apgr, bootstrap_gain, cpt, upper_hull
from emafusion.graph.evaluate import run_graph
from emafusion.graph.evaluation import stop_at_threshold
from emafusion.nodes.resources import RouterResources
from emafusion.stores.recordings import RecordSet

ROW_KEYS = {
    "name",
    "kind",
    "accuracy",
    "cost_per_1k_usd",
    "models_called",
    "escalation_rate",
    "overhead_ms_p50",
}


def test_eval_end_to_end_on_a_slice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data_dir_env: Path
) -> None:
    out = tmp_path / "results"
    argv = [
        "eval",
        "--dataset",
        "routerbench",
        "--limit",
        "40",
        "--out",
        str(out),
        "--no-progress",
        "--concurrency",
        "2",
    ]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert {"dataset", "split", "population", "n", "best_single", "rows"} <= set(results)
    assert results["dataset"] == "routerbench" and results["split"] == "test"
    assert results["n"] == 40
    rows = results["rows"]
    assert all(set(row) >= ROW_KEYS for row in rows)
    kinds = {row["kind"] for row in rows}
    assert kinds == {"single", "baseline", "router"}
    assert sum(row["kind"] == "single" for row in rows) == 11
    names = {row["name"] for row in rows}
    assert {"random", "oracle", "disagreement baseline"} <= names
    assert any(row["name"].startswith("full") for row in rows)
    for mode in ("taxonomy-only", "learned-only", "hybrid"):
        assert f"{mode}, no cascade" in names and f"{mode}, cascade depth 3" in names
    oracle = next(row for row in rows if row["name"] == "oracle")
    assert all(oracle["accuracy"] >= row["accuracy"] for row in rows)
    assert results["best_single"] in names
    assert (out / "results.md").read_text().startswith("### routerbench")
    assert (out / "tradeoff.png").read_bytes()[:4] == b"\x89PNG"
    assert "| oracle | baseline |" in capsys.readouterr().out


async def test_threshold_read_off_matches_the_graph(
    make_resources: Callable[..., RouterResources], routerbench: RecordSet
) -> None:
    resources = make_resources()
    records = routerbench.split("validation")[:25]

    def context(threshold: float) -> Context:
        return Context(
            dataset=None,
            resources=resources,
            record_outcomes=False,
            escalation_threshold=threshold,
            max_levels=3,
        )

    never_stop = await run_graph(records, context(1.01), keep_trace=True)
    for threshold in (0.5, 0.8, 0.9, 0.95):
        actual = await run_graph(records, context(threshold))
        for record, full, real in zip(records, never_stop, actual, strict=True):
            correct, usd, called = stop_at_threshold(full, record, threshold)
            assert correct == real.correct
            assert usd == pytest.approx(real.cost_usd)
            assert called == real.models_called


def test_router_metrics_on_known_points() -> None:
    singles = [(1.0, 0.5), (2.0, 0.6), (10.0, 0.9)]
    # (3.0, 0.55) costs more than (2.0, 0.6) for less; (2.0, 0.6) lies above the chord.
    assert upper_hull([*singles, (3.0, 0.55)]) == singles
    assert upper_hull([(1.0, 0.5), (5.0, 0.6), (10.0, 0.9)]) == [(1.0, 0.5), (10.0, 0.9)]
    # The zero router's AIQ is its own hull's mean; a router on the strong model's
    # accuracy at the weak model's cost dominates it.
    assert aiq([(1.0, 0.9)], singles) == pytest.approx(0.9)
    assert aiq(singles, singles) < 0.9
    weak, strong = (1.0, 0.5), (10.0, 0.9)
    assert apgr([(1.0, 0.9)], weak, strong) == pytest.approx(1.0, abs=1e-3)
    # Mixing weak and (5.5, 0.72) reaches PGR 0.5 (accuracy 0.7) at cost 5.09: x = 0.455.
    assert cpt([(5.5, 0.72)], weak, strong, 0.5) == pytest.approx(0.4545, abs=2e-3)
    assert math.isnan(cpt([(5.5, 0.6)], weak, strong, 0.5))  # PGR never reaches 0.5
    gain, low, high = bootstrap_gain([1, 1, 0, 1] * 50, [1, 0, 0, 1] * 50)
    assert gain == pytest.approx(0.25) and low < gain < high
