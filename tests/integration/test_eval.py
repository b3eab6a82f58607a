"""The evaluation end to end on a small slice, and its threshold read-off."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from emafusion.cli.main import main
from emafusion.evals.readoff import read_off_row, router_row
from emafusion.graph import Context, make_graph
from emafusion.nodes.policy import PolicySettings
from emafusion.nodes.resources import RouterResources
from emafusion.stores.recordings import RecordSet
from emafusion.train.graph_runs import run_graph

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
    """On real recordings: rows read off one never-stop run equal real graph runs."""
    graph = make_graph(make_resources())
    records = routerbench.split("validation")[:25]
    base = Context(record_outcomes=False, max_levels=3, judges=("memory_prior", "agreement"))
    never_stop = await run_graph(graph, records, base.replace(stop_early=False), keep_trace=True)
    for threshold in (0.5, 0.8, 0.9, 0.95):
        at = base.replace(escalation_threshold=threshold)
        read = read_off_row("read", never_stop, records, PolicySettings.from_context(at))
        real = router_row("real", await run_graph(graph, records, at))
        assert read.correct.tolist() == real.correct.tolist()
        assert read.cost_per_1k_usd == pytest.approx(real.cost_per_1k_usd)
        assert read.models_called == pytest.approx(real.models_called)
