"""The evaluation end to end on a small slice, and its threshold read-off."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from emafusion.cli.main import main
from emafusion.evals.readoff import read_off_row, router_row
from emafusion.graph import Context, make_graph
from emafusion.nodes.policy import PolicySettings
from emafusion.nodes.resources import DeploymentSettings, RouterResources, load_router
from emafusion.stores.judged import JudgedEvidence
from emafusion.stores.recordings import RecordSet, load_dataset
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


def test_eval_end_to_end_on_a_slice_and_the_served_router_runs_its_default_preset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data_dir_env: Path
) -> None:
    out, router = tmp_path / "results", tmp_path / "router"
    argv = [
        "eval",
        "--dataset",
        "routerbench",
        "--limit",
        "60",
        "--out",
        str(out),
        "--router-dir",
        str(router),
        "--no-progress",
        "--concurrency",
        "2",
    ]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert {"dataset", "split", "population", "n", "best_single", "rows", "presets"} <= set(results)
    assert results["dataset"] == "routerbench" and results["split"] == "test"
    assert results["n"] == 60
    rows = results["rows"]
    assert all(set(row) >= ROW_KEYS for row in rows)
    assert {row["kind"] for row in rows} == {"single", "baseline", "router"}
    assert sum(row["kind"] == "single" for row in rows) == 11
    names = {row["name"] for row in rows}
    assert {"random", "oracle", "agreement cascade", "vote of the top 3"} <= names
    assert {"emafusion default", "emafusion cheap", "emafusion max"} <= names
    # The stopping signal's quality, per level: every fused answer of every stage counted.
    levels = results["stop_signal"]["levels"]
    assert levels[0]["group"] == "level 1" and levels[-1]["group"] == "all levels"
    assert levels[-1]["n"] == sum(row["n"] for row in levels[:-1]) >= results["n"]
    assert all(row["auroc"] is None or 0.0 <= row["auroc"] <= 1.0 for row in levels)
    oracle = next(row for row in rows if row["name"] == "oracle")
    assert all(oracle["accuracy"] >= row["accuracy"] for row in rows)
    assert results["best_single"] in names
    for preset in results["presets"].values():
        assert {"accuracy", "cost_per_1k_usd"} <= set(preset["selection"])
        assert "selection_minus_test_pp" in preset
    assert results["metrics"]["replay_vs_graph_max_difference"] < 1e-9
    assert (out / "results.md").read_text().startswith("### routerbench")
    assert (out / "tradeoff.png").read_bytes()[:4] == b"\x89PNG"
    assert "| oracle | baseline |" in capsys.readouterr().out

    # The evaluated router is the served one: `ask` over that directory runs the default
    # preset's plan and threshold.
    presets = json.loads((router / "presets.json").read_text())["presets"]
    default = presets["default"]["settings"]
    assert (router / "fusion.json").is_file() and (router / "ROUTER.json").is_file()
    record = load_dataset("routerbench", data_dir=data_dir_env).split("test")[0]
    ask = ["ask", "--dataset", "routerbench", "--router-dir", str(router), "--record-id"]
    assert main([*ask, record.id, "--no-record", "--stream"]) == 0
    err = capsys.readouterr().err
    first_stage = default["stages"]["*"][0]
    assert f"[invoking: {first_stage[0]} (level 1)]" in err
    # And the graph a deployment serves from that directory decides by the preset.
    resources = load_router(DeploymentSettings(dataset="routerbench", router_dir=router))
    result = asyncio.run(
        make_graph(resources).ainvoke(
            {"query": record.query, "record_id": record.id},
            context=Context(record_outcomes=False),
        )
    )
    decided = [e["data"] for e in result["trace"] if e["event"] == "decided"]
    assert {d["threshold"] for d in decided} == {default["escalation_threshold"]}
    assert result["escalation_path"][: len(first_stage)] == first_stage
    # Each model of the plan has a fallback plan without it, chosen by the same search.
    planned = {m for plan in default["stages"].values() for stage in plan for m in stage}
    fallbacks = default["fallback_plans"]
    assert set(fallbacks) == planned
    for model, fallback in fallbacks.items():
        named = {m for plan in fallback["stages"].values() for stage in plan for m in stage}
        assert model not in named and 0.0 <= fallback["escalation_threshold"] <= 1.0
    # And the router directory says what its judged outcomes are worth, for that preset.
    judged = json.loads((router / "ROUTER.json").read_text())["judged"]
    assert JudgedEvidence.from_json(judged).matches(Context(**default))  # type: ignore[union-attr]
    assert results["judged_evidence"] == judged


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
