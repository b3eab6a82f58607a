"""The real router graph on replayed recordings: routing, escalation, failures, streaming."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from langchain_core.messages import AIMessageChunk

from emafusion.graph.context import Context
from emafusion.graph.router import builder, graph
from emafusion.nodes.resources import RouterResources
from emafusion.stores.recordings import Record, RecordSet

Factory = Callable[..., RouterResources]


def _test_records(routerbench: RecordSet, n: int = 6) -> list[Record]:
    return routerbench.split("test")[:n]


async def _ask(record: Record, **settings: Any) -> dict[str, Any]:
    context = Context(dataset="routerbench", record_outcomes=False, **settings)
    return await graph.ainvoke({"query": record.query, "record_id": record.id}, context=context)


def _events(result: dict[str, Any]) -> list[str]:
    return [e["event"] for e in result["trace"]]


async def test_router_answers_with_a_recorded_response(
    make_resources: Factory, routerbench: RecordSet
) -> None:
    resources = make_resources()
    for record in _test_records(routerbench):
        result = await _ask(record, resources=resources)
        model = result["model"]
        assert model in resources.pool.names
        assert result["answer"] == record.outcomes[model].response
        assert model in result["escalation_path"]
        assert result["overhead_ms"] >= 0.0
        # Every dollar is the recorded cost of the models called (judges here are free).
        recorded = sum(record.outcomes[m].cost_usd or 0.0 for m in result["escalation_path"])
        assert result["cost_usd"] == pytest.approx(recorded)
        events = _events(result)
        assert events[0] == "classified" and events[-1] == "returned"
        assert "invoking" in events and "judged" in events
        assert set(result) == {
            "answer",
            "model",
            "confidence",
            "cost_usd",
            "escalation_path",
            "overhead_ms",
            "trace",
        }


async def test_low_confidence_escalates_to_stronger_models(
    make_resources: Factory, routerbench: RecordSet
) -> None:
    resources = make_resources()
    for record in _test_records(routerbench, 20):
        strict = await _ask(record, resources=resources, escalation_threshold=1.01, max_levels=3)
        planned = [e["data"]["candidates"] for e in strict["trace"] if e["event"] == "predicted"]
        if len(planned[-1]) >= 2:
            break
    else:
        pytest.fail("no test query had a cascade of two or more models")
    cheap = await _ask(record, resources=resources, escalation_threshold=0.0)
    assert len(cheap["escalation_path"]) == 1
    assert strict["escalation_path"] == planned[-1][:3]
    assert "escalating" in _events(strict)
    # Cheapest first: each escalation goes to a model expected to cost more.
    invoked = [e["data"]["model"] for e in strict["trace"] if e["event"] == "invoking"]
    assert invoked == strict["escalation_path"]
    assert strict["cost_usd"] > cheap["cost_usd"]
    # Nothing cleared the bar: the most confident answer is returned.
    judged = [e["data"] for e in strict["trace"] if e["event"] == "judged"]
    best = max(judged, key=lambda d: d["confidence"])
    assert strict["confidence"] == pytest.approx(best["confidence"])


async def test_budget_stops_escalation(make_resources: Factory, routerbench: RecordSet) -> None:
    resources = make_resources()
    record = _test_records(routerbench)[1]
    result = await _ask(
        record, resources=resources, escalation_threshold=1.01, max_levels=3, budget_usd=1e-9
    )
    assert len(result["escalation_path"]) == 1
    judged = [e["data"] for e in result["trace"] if e["event"] == "judged"]
    assert judged[-1]["decision"] == "budget"
    assert result["answer"] is not None


async def test_missing_recording_escalates_past_the_model(
    make_resources: Factory, routerbench: RecordSet
) -> None:
    record = _test_records(routerbench)[2]
    resources = make_resources()
    first = (await _ask(record, resources=resources))["escalation_path"][0]
    # Replay from recordings where the first choice never answered this query.
    thinned = record.model_copy(
        update={"outcomes": {m: o for m, o in record.outcomes.items() if m != first}}
    )
    others = [r for r in routerbench.records if r.id != record.id]
    replay = RecordSet("routerbench", [*others, thinned], source="thinned")
    result = await _ask(record, resources=make_resources(records=replay))
    assert result["escalation_path"][0] == first
    assert result["model"] != first and result["answer"] is not None
    failed = [e["data"] for e in result["trace"] if e["event"] == "failed"]
    assert failed[0]["model"] == first and failed[0]["unavailable"] is True


async def test_no_model_can_answer_ends_cleanly(make_resources: Factory) -> None:
    result = await graph.ainvoke(
        {"query": "What is the capital of a country nobody recorded?"},
        context=Context(dataset="routerbench", resources=make_resources(), record_outcomes=False),
    )
    assert result["answer"] is None and result["model"] is None
    assert len(result["escalation_path"]) >= 1
    assert _events(result).count("failed") == len(result["escalation_path"])


async def test_streams_decisions_and_tokens(
    make_resources: Factory, routerbench: RecordSet
) -> None:
    resources = make_resources()
    record = _test_records(routerbench)[3]
    context = Context(dataset="routerbench", resources=resources, record_outcomes=False)
    custom: list[str] = []
    chunks: list[AIMessageChunk] = []
    async for mode, payload in graph.astream(
        {"query": record.query, "record_id": record.id},
        context=context,
        stream_mode=["custom", "messages"],
    ):
        if mode == "custom":
            custom.append(payload["emafusion"])
        elif isinstance(payload[0], AIMessageChunk):
            chunks.append(payload[0])
    assert custom[0] == "classified" and custom[-1] == "returned"
    assert "invoking" in custom and "judged" in custom
    assert chunks, "model tokens are streamed in messages mode"
    total = chunks[0]
    for chunk in chunks[1:]:
        total += chunk
    assert total.usage_metadata is not None and total.usage_metadata["input_tokens"] > 0


async def test_judged_outcome_is_recorded_into_memory(
    make_resources: Factory, routerbench: RecordSet
) -> None:
    resources = make_resources()
    record = _test_records(routerbench)[4]
    before = len(resources.memory)
    context = Context(dataset="routerbench", resources=resources, record_outcomes=True)
    result = await graph.ainvoke({"query": record.query, "record_id": record.id}, context=context)
    assert len(resources.memory) == before + 1
    stored = resources.memory.get(record.id)
    assert stored is not None
    assert stored.outcomes[result["model"]].source == "live_judged"
    assert stored.outcomes[result["model"]].score == pytest.approx(result["confidence"])
    assert "recorded" in _events(result)


def test_builder_compiles_with_a_checkpointer() -> None:
    from langgraph.checkpoint.memory import InMemorySaver

    compiled = builder.compile(checkpointer=InMemorySaver())
    assert set(compiled.get_graph().nodes) >= {
        "classify",
        "predict",
        "invoke_model",
        "judge",
        "decide",
        "finalize",
        "record",
    }
