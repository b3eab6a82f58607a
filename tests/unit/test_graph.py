"""The real router graph over synthetic recordings: routing, escalation, failures,
streaming, recording, checkpoints, loud configuration errors, and replay == graph."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessageChunk
from langgraph.checkpoint.memory import InMemorySaver

from emafusion.graph import Context, ContextError, make_graph
from emafusion.graph.state import JudgeTask
from emafusion.nodes import policy
from emafusion.nodes.judges import JudgeResult, register_judge
from emafusion.nodes.resources import RouterResources
from emafusion.stores.memory import OutcomeMemory
from emafusion.stores.recordings import Record, RecordSet
from emafusion.train.traces import decided_events
from tests import synthetic


def _tests(records: RecordSet, n: int = 8) -> list[Record]:
    return records.split("test")[:n]


# The synthetic taxonomy is near certain and names one model per topic; most tests here
# are about cascades, so they let the learned router plan every query.
LEARNED = {"taxonomy_threshold": 1.01}


async def _ask(resources: RouterResources, record: Record, **settings: Any) -> dict[str, Any]:
    context = Context(record_outcomes=False, **{**LEARNED, **settings})
    return await make_graph(resources).ainvoke(
        {"query": record.query, "record_id": record.id}, context=context
    )


def _events(result: dict[str, Any]) -> list[str]:
    return [e["event"] for e in result["trace"]]


async def test_router_answers_with_a_recorded_response(
    tiny_resources: RouterResources, synthetic_records: RecordSet
) -> None:
    for record in _tests(synthetic_records):
        result = await _ask(tiny_resources, record)
        model = result["model"]
        assert result["answer"] == record.outcomes[model].response
        assert model in result["escalation_path"]
        # Every dollar is the recorded cost of the models called (these judges are free).
        recorded = sum(record.outcomes[m].cost_usd or 0.0 for m in result["escalation_path"])
        assert result["cost_usd"] == pytest.approx(recorded)
        events = _events(result)
        assert events[0] == "classified" and events[-1] == "returned"
        assert "invoking" in events and "decided" in events
        assert len(result["run_id"]) == 32
        assert set(result) == {
            "run_id",
            "answer",
            "model",
            "confidence",
            "cost_usd",
            "escalation_path",
            "overhead_ms",
            "trace",
        }


async def test_low_confidence_escalates_cheapest_first(
    tiny_resources: RouterResources, synthetic_records: RecordSet
) -> None:
    for record in _tests(synthetic_records, 40):
        every = await _ask(tiny_resources, record, stop_early=False, max_levels=3)
        if len(every["escalation_path"]) >= 2:
            break
    else:
        pytest.fail("no test query had a cascade of two or more models")
    first = await _ask(tiny_resources, record, escalation_threshold=0.0)
    assert first["escalation_path"] == every["escalation_path"][:1]
    assert "escalating" in _events(every)
    prices = {m: p for m, (p, _) in synthetic.MODELS.items()}
    path_prices = [prices[m] for m in every["escalation_path"]]
    assert path_prices == sorted(path_prices)
    assert every["cost_usd"] > first["cost_usd"]
    # Nothing may stop early: the most confident answer, the later one on ties.
    decided = decided_events(every["trace"])
    final = decided[-1]["view"]["attempts"]
    best = max(reversed(range(len(final))), key=lambda i: final[i]["confidence"] or 0.0)
    assert every["model"] == final[best]["model"]


async def test_budget_stops_escalation(
    tiny_resources: RouterResources, synthetic_records: RecordSet
) -> None:
    for record in _tests(synthetic_records, 40):
        every = await _ask(tiny_resources, record, stop_early=False)
        if len(every["escalation_path"]) >= 2:
            break
    else:
        pytest.fail("no test query had a cascade of two or more models")
    # The last planned call fits the budget alone, not on top of the ones before it.
    last_bound = decided_events(every["trace"])[-2]["view"]["next_cost_usd"]
    assert last_bound is not None
    result = await _ask(tiny_resources, record, stop_early=False, budget_usd=last_bound)
    assert len(result["escalation_path"]) < len(every["escalation_path"])
    last = decided_events(result["trace"])[-1]
    assert last["decision"] == "budget" and "over the budget" in last["reason"]
    assert result["answer"] is not None and result["cost_usd"] <= last_bound


async def test_the_budget_is_checked_before_the_first_call(
    tiny_resources: RouterResources, synthetic_records: RecordSet
) -> None:
    record = _tests(synthetic_records)[1]
    result = await _ask(tiny_resources, record, budget_usd=1e-9)
    assert result["escalation_path"] == [] and result["cost_usd"] == 0.0
    assert result["trace"][-1]["data"]["reason"].startswith("budget: no model's call fits")
    # A query too long for the strong models' price goes only to one that fits.
    huge = record.query + " filler" * 20_000  # ~35k prompt tokens
    bound = {m: p * 35_000 / 1e6 for m, (p, _) in synthetic.MODELS.items()}
    budget = (bound["small"] + bound["mid"]) / 2  # tiny and small fit, mid and large not
    long = await make_graph(tiny_resources).ainvoke(
        {"query": huge}, context=Context(budget_usd=budget, record_outcomes=False, **LEARNED)
    )
    assert set(long["escalation_path"]) <= {"tiny", "small"}
    assert long["cost_usd"] <= budget


async def test_missing_recording_escalates_past_the_model(synthetic_records: RecordSet) -> None:
    record = _tests(synthetic_records)[2]
    resources = synthetic.make_resources(synthetic_records)
    first = (await _ask(resources, record))["escalation_path"][0]
    thinned = record.model_copy(
        update={"outcomes": {m: o for m, o in record.outcomes.items() if m != first}}
    )
    others = [r for r in synthetic_records.records if r.id != record.id]
    replay = RecordSet("synthetic", [*others, thinned], source="thinned")
    result = await _ask(synthetic.make_resources(synthetic_records, replay_records=replay), record)
    assert result["escalation_path"][0] == first
    assert result["model"] != first and result["answer"] is not None
    failed = [e["data"] for e in result["trace"] if e["event"] == "failed"]
    assert failed[0]["model"] == first and failed[0]["unavailable"] is True


async def test_no_model_can_answer_ends_cleanly(tiny_resources: RouterResources) -> None:
    result = await make_graph(tiny_resources).ainvoke(
        {"query": "A question nobody recorded?"}, context=Context(record_outcomes=False)
    )
    assert result["answer"] is None and result["model"] is None
    assert len(result["escalation_path"]) >= 1
    assert _events(result).count("failed") == len(result["escalation_path"])
    assert result["trace"][-1]["data"]["reason"] == "no model answered"


async def test_streams_decisions_and_tokens(
    tiny_resources: RouterResources, synthetic_records: RecordSet
) -> None:
    record = _tests(synthetic_records)[3]
    custom: list[str] = []
    chunks: list[AIMessageChunk] = []
    async for mode, payload in make_graph(tiny_resources).astream(
        {"query": record.query, "record_id": record.id},
        context=Context(record_outcomes=False),
        stream_mode=["custom", "messages"],
    ):
        if mode == "custom":
            custom.append(payload["emafusion"])
        elif isinstance(payload[0], AIMessageChunk):
            chunks.append(payload[0])
    assert custom[0] == "classified" and custom[-1] == "returned"
    assert "invoking" in custom and "decided" in custom
    total = chunks[0]
    for chunk in chunks[1:]:
        total += chunk
    assert total.usage_metadata is not None and total.usage_metadata["input_tokens"] == 90


async def test_judged_outcome_is_recorded_and_persisted_only_if_the_deployment_says(
    synthetic_records: RecordSet, tmp_path: Path
) -> None:
    resources = synthetic.make_resources(synthetic_records, router_dir=tmp_path / "router")
    record = _tests(synthetic_records)[4]
    before = len(resources.memory)
    graph = make_graph(resources)
    off = await graph.ainvoke(
        {"query": record.query, "record_id": record.id}, context=Context(record_outcomes=False)
    )
    assert resources.flush_records()  # recording runs in the background
    assert len(resources.memory) == before and "recorded" not in _events(off)
    result = await graph.ainvoke(
        {"query": record.query, "record_id": record.id}, context=Context(record_outcomes=True)
    )
    assert resources.flush_records()
    assert len(resources.memory) == before + 1
    stored = resources.memory.get(record.id)
    assert stored is not None
    assert stored.outcomes[result["model"]].source == "live_judged"
    assert stored.outcomes[result["model"]].score == pytest.approx(result["confidence"])
    assert not (tmp_path / "router" / "memory").exists()
    resources.persist_outcomes = True
    other = _tests(synthetic_records)[5]
    await graph.ainvoke(
        {"query": other.query, "record_id": other.id}, context=Context(record_outcomes=True)
    )
    assert resources.flush_records()
    # Durable: another process loading the router directory sees the live outcome.
    reloaded = OutcomeMemory.load(tmp_path / "router" / "memory")
    stored_again = reloaded.get(other.id)
    assert stored_again is not None and stored_again.judged


class _BrokenJudge:
    name = "test_broken"

    async def score(self, task: JudgeTask, resources: object, context: object) -> JudgeResult:
        raise RuntimeError("judge model down; key sk-abcdefghijklmnop")


register_judge(_BrokenJudge())  # type: ignore[arg-type]


async def test_a_failing_judge_fails_closed_and_is_not_recorded(
    tiny_resources: RouterResources, synthetic_records: RecordSet
) -> None:
    record = _tests(synthetic_records)[5]
    judges = ("memory_prior", "test_broken")
    before = len(tiny_resources.memory)
    context = Context(judges=judges, escalation_threshold=0.0, record_outcomes=True, **LEARNED)
    result = await make_graph(tiny_resources).ainvoke(
        {"query": record.query, "record_id": record.id}, context=context
    )
    decided = decided_events(result["trace"])
    # Even at threshold 0 no answer is trusted on a judge that failed: every level is called.
    assert all(d["decision"] != "return" for d in decided)
    assert all(d["confidence"] == 0.0 for d in decided if d["status"] == "answered")
    assert len(tiny_resources.memory) == before
    assert "sk-abcdefghijklmnop" not in str(result)


async def test_unknown_judge_fails_at_start_with_the_valid_names(
    tiny_resources: RouterResources, synthetic_records: RecordSet
) -> None:
    record = _tests(synthetic_records)[0]
    with pytest.raises(ContextError, match=r"unknown judge\(s\) \['memory_priro'\].*answer_format"):
        await _ask(tiny_resources, record, judges=("memory_priro",))
    with pytest.raises(ContextError, match="no combiner fitted"):
        await _ask(tiny_resources, record, combiner="learned")
    with pytest.raises(ContextError, match="llm_judge is not set"):
        await _ask(tiny_resources, record, judges=("llm",))


async def test_taxonomy_only_goes_straight_to_the_models(
    tiny_resources: RouterResources, synthetic_records: RecordSet
) -> None:
    record = _tests(synthetic_records)[0]
    result = await _ask(tiny_resources, record, taxonomy_threshold=0.0, refine_with_memory=False)
    events = _events(result)
    assert "predicted" not in events and events[:2] == ["classified", "invoking"]
    classified = result["trace"][0]["data"]
    assert classified["route_mode"] == "taxonomy"
    assert result["escalation_path"][0] == classified["candidates"][0]


async def test_runs_with_a_checkpointer_and_its_state_serializes(
    tiny_resources: RouterResources, synthetic_records: RecordSet
) -> None:
    record = _tests(synthetic_records)[6]
    saver = InMemorySaver()
    graph = make_graph(tiny_resources, checkpointer=saver)
    config = {"configurable": {"thread_id": "t1"}}
    result = await graph.ainvoke(
        {"query": record.query, "record_id": record.id},
        config=config,  # type: ignore[arg-type]
        context=Context(record_outcomes=False),
    )
    state = await graph.aget_state(config)  # type: ignore[arg-type]
    assert state.values["answer"] == result["answer"]
    assert state.values["attempts"][-1]["decision"] in ("return", "exhausted", "max_levels")
    history = [s async for s in graph.aget_state_history(config)]  # type: ignore[arg-type]
    assert len(history) >= 5
    # What the checkpointer stored loads back as plain data.
    serde = saver.serde
    typed = serde.dumps_typed(state.values)
    assert serde.loads_typed(typed)["trace"] == state.values["trace"]


def _outcome(result: dict[str, Any]) -> tuple[str | None, int, float]:
    return result["model"], len(result["escalation_path"]), round(result["cost_usd"], 12)


async def test_replay_of_a_trace_decides_exactly_like_the_graph(
    tiny_resources: RouterResources, synthetic_records: RecordSet
) -> None:
    """One never-stop run per level cap; every threshold x budget replayed through the
    policy equals a real graph run at those settings."""
    records = _tests(synthetic_records, 14)
    graph = make_graph(tiny_resources)
    thresholds = (0.0, 0.55, 0.7, 0.8, 0.95, 1.0)
    budgets = (None, 3e-5, 1.5e-4, 1.2e-3)
    compared = 0
    for levels in (1, 2, 3):
        for record in records:
            recorded = await _ask(tiny_resources, record, stop_early=False, max_levels=levels)
            views = policy.views_of(decided_events(recorded["trace"]))
            for threshold, budget in itertools.product(thresholds, budgets):
                context = Context(
                    escalation_threshold=threshold,
                    budget_usd=budget,
                    max_levels=levels,
                    record_outcomes=False,
                    **LEARNED,
                )
                live = await graph.ainvoke(
                    {"query": record.query, "record_id": record.id}, context=context
                )
                replayed = policy.replay(views, policy.PolicySettings.from_context(context))
                assert (replayed.model, replayed.attempts, round(replayed.spent_usd, 12)) == (
                    _outcome(live)
                ), (record.id, levels, threshold, budget)
                assert replayed.decision == live["trace"][-2]["data"]["decision"]
                compared += 1
    assert compared == 3 * len(records) * len(thresholds) * len(budgets)


async def test_failover_reaches_the_rest_of_the_pool(synthetic_records: RecordSet) -> None:
    """A confident taxonomy plans only its category's best; with that model down, the run
    still gets an answer from the rest of the pool, while a healthy model exists."""
    records = [r for r in _tests(synthetic_records, 40) if r.category == "history"][:4]
    down = "large"
    held_out = {r.id for r in synthetic_records.split("validation", "test")}
    thinned = [
        r.model_copy(update={"outcomes": {m: o for m, o in r.outcomes.items() if m != down}})
        if r.id in held_out
        else r
        for r in synthetic_records.records
    ]
    replay = RecordSet("synthetic", thinned, source="large down")
    resources = synthetic.make_resources(synthetic_records, replay_records=replay)
    graph = make_graph(resources)
    for record in records:
        result = await graph.ainvoke(
            {"query": record.query, "record_id": record.id},
            context=Context(record_outcomes=False),
        )
        classified = result["trace"][0]["data"]
        assert classified["route_mode"] == "taxonomy" and classified["candidates"] == [down]
        assert result["escalation_path"][0] == down
        assert result["model"] not in (None, down)
        assert result["answer"] == record.outcomes[result["model"]].response
    # Every model down: the run ends without an answer, having tried each once.
    quiet = records[0].id
    silent = [r.model_copy(update={"outcomes": {}}) if r.id == quiet else r for r in thinned]
    nobody = RecordSet("synthetic", silent, "nobody answers one query")
    empty = make_graph(synthetic.make_resources(synthetic_records, replay_records=nobody))
    result = await empty.ainvoke(
        {"query": records[0].query, "record_id": records[0].id},
        context=Context(record_outcomes=False),
    )
    assert result["answer"] is None
    assert sorted(result["escalation_path"]) == sorted(synthetic.MODELS)


PLAN = {"*": [["tiny", "small"], ["mid"], ["large"]]}
FUSED = {"stages": PLAN, "fusion": "vote", "max_levels": 6}


async def test_a_stage_calls_its_models_at_once_and_fuses_their_answers(
    tiny_resources: RouterResources, synthetic_records: RecordSet
) -> None:
    record = _tests(synthetic_records)[3]
    result = await _ask(tiny_resources, record, stop_early=False, **FUSED)
    assert result["escalation_path"] == ["tiny", "small", "mid", "large"]
    events = _events(result)
    # Both models of the first stage are called before anything is decided.
    assert events[1:3] == ["invoking", "invoking"] and events[3] == "decided"
    decided = decided_events(result["trace"])
    assert len(decided) == 3  # one decision per stage
    assert [a["stage"] for a in decided[-1]["view"]["attempts"]] == [0, 0, 1, 2]
    attempts = decided[-1]["view"]["attempts"]
    assert all(a["answer_key"] and a["answer_key"].startswith("option:") for a in attempts)
    assert all(0 < (a["reliability"] or 0) < 1 for a in attempts)
    # The returned answer is the fused vote's representative.
    fused = policy.fuse(decided[-1]["view"])
    assert fused is not None
    assert result["model"] == attempts[fused.chosen]["model"]
    assert result["confidence"] == pytest.approx(fused.confidence)


async def test_replay_of_parallel_stages_and_fusion_decides_like_the_graph(
    tiny_resources: RouterResources, synthetic_records: RecordSet
) -> None:
    graph = make_graph(tiny_resources)
    compared = 0
    for record in _tests(synthetic_records, 10):
        recorded = await _ask(tiny_resources, record, stop_early=False, **FUSED)
        views = policy.views_of(decided_events(recorded["trace"]))
        for threshold, budget in itertools.product((0.3, 0.6, 0.9, 0.99), (None, 1.5e-4)):
            context = Context(
                escalation_threshold=threshold,
                budget_usd=budget,
                record_outcomes=False,
                **LEARNED,
                **FUSED,
            )
            live = await graph.ainvoke(
                {"query": record.query, "record_id": record.id}, context=context
            )
            replayed = policy.replay(views, policy.PolicySettings.from_context(context))
            assert (replayed.model, replayed.attempts, round(replayed.spent_usd, 12)) == (
                _outcome(live)
            ), (record.id, threshold, budget)
            assert replayed.confidence == pytest.approx(live["confidence"])
            compared += 1
    assert compared == 80
