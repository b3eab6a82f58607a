"""Drift: live ground truth that runs below the memory's predictions lowers them for that
model only; the half-life is chosen on data (long without drift, short with it); the
choice travels in the router's manifest."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from emafusion.graph import Context, make_graph
from emafusion.nodes.feedback import submit_feedback
from emafusion.stores.drift import (
    DEFAULT_HALF_LIFE,
    MAX_TEST_HALF_LIFE,
    RecentResiduals,
    choose_half_life,
)
from emafusion.stores.judged import JudgedEvidence, judging_key
from emafusion.stores.recordings import RecordSet
from tests import synthetic


def test_the_offset_follows_the_residuals_and_forgets_with_the_half_life() -> None:
    recent = RecentResiduals(half_life=10.0, pseudo_count=10.0)
    assert recent.offset("m") == 0.0
    for _ in range(200):
        recent.observe("m", 0.0, 0.8)
    assert -0.8 < recent.offset("m") < -0.4  # shrunk toward 0 by the pseudo-count
    for _ in range(200):
        recent.observe("m", 1.0, 0.8)  # it recovered: the old failures are forgotten
    assert 0.1 < recent.offset("m") <= 0.2
    assert recent.offset("other") == 0.0


def test_the_half_life_is_chosen_on_data() -> None:
    rng = np.random.default_rng(0)
    stationary = {"a": list(rng.normal(0, 0.4, 600)), "b": list(rng.normal(0, 0.4, 600))}
    assert choose_half_life(stationary)["half_life"] in (None, 800.0, 400.0)
    shifting = {"a": list(np.r_[rng.normal(0.3, 0.1, 200), rng.normal(-0.3, 0.1, 200)] * 1.0)}
    shifting["a"] += list(rng.normal(0.3, 0.1, 200))
    chosen = choose_half_life(shifting)
    assert chosen["half_life"] is not None and chosen["half_life"] <= 100
    assert set(chosen["mean_squared_error"]) >= {"25", "inf"}
    assert RecentResiduals.from_json(chosen).half_life == chosen["half_life"]
    assert math.isinf(RecentResiduals.from_json({"half_life": None}).half_life)
    assert RecentResiduals.from_json(None).half_life == DEFAULT_HALF_LIFE  # older routers
    for damaged in ({"half_life": -3}, {"half_life": "long"}, {}, [200], {"half_life": True}):
        with pytest.raises(ValueError, match=r"ROUTER.json: 'drift' .*Fix: rebuild"):
            RecentResiduals.from_json(damaged)


async def test_failing_feedback_lowers_that_models_predictions(
    synthetic_records: RecordSet,
) -> None:
    resources = synthetic.make_resources(synthetic_records)
    assert "drift" in synthetic.make_artifacts(synthetic_records).info
    graph = make_graph(resources)
    context = Context(record_outcomes=True)
    stream = synthetic_records.split("validation", "test")

    before = {m: resources.drift.offset(m) for m in resources.pool.names}
    answered_by: dict[str, int] = {}
    for record in stream:
        output = await graph.ainvoke(
            {"query": record.query, "record_id": record.id}, context=context
        )
        if output["model"]:
            answered_by[output["model"]] = answered_by.get(output["model"], 0) + 1
            submit_feedback(resources, output["run_id"], 0.0)  # every answer was wrong
    assert all(v == 0.0 for v in before.values())
    for model in answered_by:
        assert resources.drift.offset(model) < -0.1
    unused = [m for m in resources.pool.names if m not in answered_by]
    assert all(resources.drift.offset(m) == 0.0 for m in unused)


def test_the_taxonomy_view_of_a_model_moves_with_its_offset(
    synthetic_records: RecordSet,
) -> None:
    from emafusion.nodes.classify import category_accuracy

    resources = synthetic.make_resources(synthetic_records)
    before = category_accuracy(resources, "history")
    for _ in range(100):
        resources.drift.observe("mid", 0.0, 0.75)
    after = category_accuracy(resources, "history")
    assert after["mid"] < before["mid"] - 0.2
    assert all(after[m] == before[m] for m in before if m != "mid")


def test_a_model_is_degraded_only_on_strong_evidence_against_its_plan_s_residuals() -> None:
    rng = np.random.default_rng(1)
    baseline = {"truth": {"m": (0.05, 0.4)}, "judged": {"m": (-0.1, 0.2)}}
    recent = RecentResiduals(half_life=math.inf, baseline=baseline)
    for r, j in zip(rng.normal(0.05, 0.4, 2000), rng.normal(-0.1, 0.2, 2000), strict=True):
        recent.observe("m", 0.8 + r, 0.8)  # as in the plan's validation runs: never
        recent.observe_judged("m", 0.8 + j, 0.8)
        assert not recent.degraded("m")
    worse = RecentResiduals(half_life=50.0, baseline=baseline)
    looks = []
    for r in rng.normal(-0.4, 0.4, 60):  # 45 points worse than in validation
        worse.observe("m", 0.8 + r, 0.8)
        looks.append(worse.degraded("m"))
    assert looks[-1] and not looks[0]  # it takes some outcomes
    assert not worse.degraded("no baseline")
    # Judged residuals are tested against the judged baseline: -0.1 is normal there.
    judged = RecentResiduals(half_life=math.inf, baseline=baseline)
    for j in rng.normal(-0.1, 0.2, 200):
        judged.observe_judged("m", 0.8 + j, 0.8)
    assert not judged.degraded("m") and judged.offset("m") == 0.0  # the offset reads truth
    for _ in range(100):
        judged.observe_judged("m", 0.3, 0.8)
    assert judged.degraded("m")
    # Feedback of runs on another plan moves the offset, not the test.
    other = RecentResiduals(half_life=math.inf, baseline=baseline)
    for _ in range(100):
        other.observe("m", 0.0, 0.9, tested=False)
    assert not other.degraded("m") and other.offset("m") < -0.5


def test_the_degradation_test_forgets_so_a_recovered_model_clears() -> None:
    """Even where the offset never forgets (half-life inf), the test reads a recent window."""
    baseline = {"truth": {"m": (0.0, 0.4)}}
    recent = RecentResiduals(half_life=math.inf, baseline=baseline)
    for _ in range(300):
        recent.observe("m", 0.0, 0.9)  # a long bad spell
    assert recent.degraded("m")
    rng = np.random.default_rng(2)
    cleared = None
    for i, r in enumerate(rng.normal(0.0, 0.4, 3000)):  # as good as in validation again
        recent.observe("m", 0.5 + r, 0.5)
        if not recent.degraded("m"):
            cleared = i
            break
    # Within a few test half-lives, not the thousands of outcomes a lifetime mean needs.
    assert cleared is not None and cleared < 4 * MAX_TEST_HALF_LIFE
    assert recent.offset("m") < -0.05  # the offset itself still remembers the bad spell


def _measured_for(context: Context, models: list[str]) -> JudgedEvidence:
    """A measurement of `context`'s plan whose validation residuals were all near 0."""
    return JudgedEvidence(
        judging_key(context),
        0.3,
        1.0,
        0.0,
        0.18,
        0.2,
        500,
        "validation",
        baseline={"truth": {m: (0.0, 0.4) for m in models}},
    )


async def _classified_event(graph: Any, record: Any, context: Context) -> dict[str, Any]:
    """The `classified` event of one run of `record` under `context`."""
    output = await graph.ainvoke({"query": record.query, "record_id": record.id}, context=context)
    return next(e["data"] for e in output["trace"] if e["event"] == "classified")


async def test_a_fixed_plan_leaves_a_degraded_model_out_and_says_so(
    synthetic_records: RecordSet,
) -> None:
    resources = synthetic.make_resources(synthetic_records)
    graph = make_graph(resources)
    record = synthetic_records.split("test")[0]
    context = Context(
        stages={"*": [["small", "mid"], ["large"]]}, exploration_rate=0.0, record_outcomes=False
    )  # no re-test share (see the next tests)

    async def classified(run: Context = context) -> dict[str, Any]:
        return await _classified_event(graph, record, run)

    for _ in range(40):
        resources.drift.observe("small", 0.0, 0.9)  # live answers far below validation's
    assert (await classified())["candidates"] == ["small", "mid", "large"]  # never measured
    resources.use_judged(_measured_for(context, ["small", "mid", "large"]))
    event = await classified()
    assert event["candidates"] == ["mid", "large"] and event["degraded"] == ["small"]
    other_plan = context.replace(stages={"*": [["small"], ["large"]]})
    assert (await classified(other_plan))["degraded"] == []  # measured for another plan
    for model in ("mid", "large"):  # all degraded: the plan is kept whole, not emptied
        for _ in range(40):
            resources.drift.observe(model, 0.0, 0.9)
    event = await classified()
    assert event["candidates"] == ["small", "mid", "large"] and event["degraded"] == []


async def test_a_degraded_model_switches_the_run_to_its_fallback_plan_and_threshold(
    synthetic_records: RecordSet,
) -> None:
    from langgraph.checkpoint.memory import InMemorySaver

    resources = synthetic.make_resources(synthetic_records)
    graph = make_graph(resources, checkpointer=InMemorySaver())
    record = synthetic_records.split("test")[0]
    fallback = {"stages": {"*": [["mid"], ["large"]]}, "escalation_threshold": 0.55}
    context = Context(
        stages={"*": [["small", "mid"], ["large"]]},
        escalation_threshold=0.9,
        fallback_plans={"small": fallback},
        exploration_rate=0.0,
        record_outcomes=False,
    )
    resources.use_judged(_measured_for(context, ["small", "mid", "large"]))
    runs = iter(range(100))

    async def run() -> tuple[dict[str, Any], dict[str, Any]]:
        config: Any = {"configurable": {"thread_id": f"t{next(runs)}"}}
        output = await graph.ainvoke(
            {"query": record.query, "record_id": record.id}, config=config, context=context
        )
        state = (await graph.aget_state(config)).values
        return next(e["data"] for e in output["trace"] if e["event"] == "classified"), state

    event, state = await run()
    assert event["fallback_for"] is None and state["settings"]["escalation_threshold"] == 0.9
    for _ in range(40):
        resources.drift.observe("small", 0.0, 0.9)
    event, state = await run()
    assert event["fallback_for"] == "small" and event["candidates"] == ["mid", "large"]
    assert state["settings"]["escalation_threshold"] == 0.55  # the whole run decides by it
    for _ in range(40):  # the fallback's own model degraded too: no switch, small left out
        resources.drift.observe("mid", 0.0, 0.9)
    event, _ = await run()
    assert event["fallback_for"] is None and event["candidates"] == ["large"]
    assert event["degraded"] == ["mid", "small"]


async def test_a_dropped_model_is_retested_on_the_exploration_share_and_returns_when_recovered(
    synthetic_records: RecordSet,
) -> None:
    resources = synthetic.make_resources(synthetic_records)
    graph = make_graph(resources)
    record = synthetic_records.split("test")[0]
    plan = Context(stages={"*": [["small", "mid"], ["large"]]}, record_outcomes=False)
    resources.use_judged(_measured_for(plan, ["small", "mid", "large"]))

    async def classified(rate: float) -> dict[str, Any]:
        return await _classified_event(graph, record, plan.replace(exploration_rate=rate))

    for _ in range(40):
        resources.drift.observe("small", 0.0, 0.9)
    dropped = await classified(0.0)  # no re-test share: left out
    assert dropped["candidates"] == ["mid", "large"] and dropped["retested"] == []
    kept = await classified(1.0)  # every query in the share: the measured plan runs whole
    assert kept["candidates"] == ["small", "mid", "large"] and kept["retested"] == ["small"]
    assert kept["degraded"] == []
    for _ in range(2000):  # the re-tests' outcomes are as good as validation's again
        resources.drift.observe("small", 0.9, 0.9)
    back = await classified(0.0)
    assert back["candidates"] == ["small", "mid", "large"] and back["degraded"] == []
    assert back["retested"] == []
