"""Context.models: a run restricted to some pool models plans, re-ranks and falls back
within them only; unknown names are refused at run start, listing the pool."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from emafusion.graph import Context, ContextError, make_graph
from emafusion.nodes.validate import allowed_models
from emafusion.stores.recordings import RecordSet
from tests import synthetic


def test_models_field_is_validated() -> None:
    assert Context(models=["tiny", "mid"]).models == ("tiny", "mid")
    with pytest.raises(ValidationError, match="twice"):
        Context(models=("tiny", "tiny"))
    with pytest.raises(ValidationError, match="at least 1"):
        Context(models=())
    with pytest.raises(ValidationError, match="non-empty"):
        Context(models=(" ",))


async def test_unknown_models_are_refused_listing_the_pool(
    synthetic_records: RecordSet,
) -> None:
    graph = make_graph(synthetic.make_resources(synthetic_records))
    with pytest.raises(ContextError, match=r"\['gpt-9'\] not in the pool; pool: tiny, small"):
        await graph.ainvoke({"query": "anything"}, context=Context(models=("gpt-9", "tiny")))


def test_allowed_models_keep_pool_order(synthetic_records: RecordSet) -> None:
    resources = synthetic.make_resources(synthetic_records)
    assert allowed_models(Context(models=("large", "tiny")), resources) == ["tiny", "large"]
    assert allowed_models(Context(), resources) == resources.pool.names


@pytest.mark.parametrize("models", [("mid",), ("tiny", "large"), ("small", "mid")])
async def test_every_call_stays_within_the_allowed_models(
    synthetic_records: RecordSet, models: tuple[str, ...]
) -> None:
    graph = make_graph(synthetic.make_resources(synthetic_records))
    # A threshold no answer reaches: the cascade climbs as far as it may.
    context = Context(models=models, escalation_threshold=1.0, max_levels=4)
    called: set[str] = set()
    for record in synthetic_records.split("test")[:12]:
        result = await graph.ainvoke({"query": record.query}, context=context)
        called |= set(result["escalation_path"])
        assert result["model"] in models
    assert called <= set(models)
    assert called  # something answered


def _without(records: RecordSet, record_id: str, models: set[str]) -> RecordSet:
    """The same queries, one with no recording for `models`: those calls fail there."""
    stripped = [
        r.model_copy(update={"outcomes": {m: o for m, o in r.outcomes.items() if m not in models}})
        if r.id == record_id
        else r
        for r in records.records
    ]
    return RecordSet(records.name, stripped, source="stripped")


async def test_the_failover_fallback_stays_within_the_allowed_models(
    synthetic_records: RecordSet,
) -> None:
    record = synthetic_records.split("test")[0]
    replay = _without(synthetic_records, record.id, {"tiny", "small"})
    resources = synthetic.make_resources(synthetic_records, replay_records=replay)
    graph = make_graph(resources)
    restricted = await graph.ainvoke(
        {"query": record.query}, context=Context(models=("tiny", "small"))
    )
    # Both allowed models fail; the rest of the pool is not called to rescue the run.
    assert set(restricted["escalation_path"]) == {"tiny", "small"}
    assert restricted["model"] is None
    # Unrestricted, the same failures fall back to the rest of the pool.
    free = await graph.ainvoke(
        {"query": record.query}, context=Context(models=("tiny", "small", "large"))
    )
    assert free["model"] == "large"
    assert set(free["escalation_path"]) <= {"tiny", "small", "large"}


async def test_a_fixed_plan_keeps_to_the_allowed_models(synthetic_records: RecordSet) -> None:
    graph = make_graph(synthetic.make_resources(synthetic_records))
    stages = {"*": [["tiny", "small"], ["large"]]}
    context = Context(stages=stages, models=("small", "large"), escalation_threshold=1.0)
    for record in synthetic_records.split("test")[:6]:
        result = await graph.ainvoke({"query": record.query}, context=context)
        assert set(result["escalation_path"]) == {"small", "large"}
