"""Exploration of a model with no history, through the real graph on the synthetic world:
it is tried on about the configured share of queries, only where its call fits the
exploration budget, never with a zero rate, and no longer once it has its counted
outcomes; the judges read the memory's prediction of it, never the Thompson draw."""

from __future__ import annotations

from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from emafusion.graph import Context, make_graph
from emafusion.nodes.exploration import Evidence, explore_plan, in_explored_share, pick
from emafusion.nodes.feedback import submit_feedback
from emafusion.nodes.planning import call_cost_bound
from emafusion.nodes.resources import RouterResources
from emafusion.stores.recordings import Record, RecordSet
from tests import synthetic

NEW = "large"


def _world_without_new_model() -> tuple[RouterResources, list[Record]]:
    """A router whose memory and classifier never saw NEW, over the full pool: NEW joined
    the pool with no history. The replay answers with every model's recordings."""
    records = synthetic.make_records()
    stripped = RecordSet(
        "synthetic",
        [
            r.model_copy(update={"outcomes": {k: v for k, v in r.outcomes.items() if k != NEW}})
            for r in records.records
        ],
        source="synthetic without large",
    )
    resources = synthetic.make_resources(stripped, replay_records=records)
    return resources, records.split("validation", "test")


def _events(output: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [e["data"] for e in output["trace"] if e["event"] == name]


def _explored(output: dict[str, Any]) -> str | None:
    found = [e.get("explored") for n in ("classified", "predicted") for e in _events(output, n)]
    return next((m for m in found if m), None)


async def _route(
    resources: RouterResources, stream: list[Record], context: Context, feedback: bool = False
) -> list[dict[str, Any]]:
    """Each query's whole final state (attempts, candidates, verdicts), in order."""
    graph = make_graph(resources, checkpointer=InMemorySaver())
    outputs = []
    for i, record in enumerate(stream):
        config: Any = {"configurable": {"thread_id": f"t{i}"}}
        await graph.ainvoke(
            {"query": record.query, "record_id": record.id}, config=config, context=context
        )
        output = dict((await graph.aget_state(config)).values)
        outputs.append(output)
        if feedback and output.get("model"):
            score = record.outcomes[output["model"]].score
            submit_feedback(resources, output["run_id"], score)
    return outputs


async def test_a_new_model_is_explored_on_about_the_configured_share() -> None:
    resources, stream = _world_without_new_model()
    context = Context(exploration_rate=0.3, exploration_outcomes=50)
    outputs = await _route(resources, stream, context)
    explored = [r for r, o in zip(stream, outputs, strict=True) if _explored(o) == NEW]
    share = len(explored) / len(stream)
    assert 0.15 < share < 0.45
    # Only queries in the seeded share explore, and the explored model is the plan's top.
    assert all(in_explored_share(r.query, context) for r in explored)
    for output in outputs:
        if _explored(output) == NEW:
            assert output["attempts"][0]["model"] == NEW  # called first
    answered = sum(1 for o in outputs if o.get("model") == NEW)
    assert answered > 0  # it answers: its outcome is what the memory learns it from


async def test_a_zero_rate_never_calls_the_new_model() -> None:
    resources, stream = _world_without_new_model()
    outputs = await _route(resources, stream, Context(exploration_rate=0.0))
    assert not any(a["model"] == NEW for o in outputs for a in o["attempts"])
    assert not any(_explored(o) for o in outputs)


async def test_exploration_stays_within_the_exploration_budget() -> None:
    resources, stream = _world_without_new_model()
    spec = resources.spec(NEW)
    bound = max(call_cost_bound(spec, r.query, 0.0) for r in stream)
    cheap_models = [m for m in resources.pool.names if m != NEW]
    query = stream[0].query
    cheap_bound = min(call_cost_bound(resources.spec(m), query, 0.0) for m in cheap_models)
    assert cheap_bound < bound
    too_small = Context(exploration_rate=1.0, exploration_budget_usd=bound * 0.5)
    outputs = await _route(resources, stream[:30], too_small)
    assert not any(a["model"] == NEW for o in outputs for a in o["attempts"])
    enough = Context(exploration_rate=1.0, exploration_budget_usd=bound)
    outputs = await _route(resources, stream[:30], enough)
    assert all(_explored(o) == NEW for o in outputs)


async def test_exploration_ends_once_the_model_has_its_outcomes() -> None:
    resources, stream = _world_without_new_model()
    context = Context(exploration_rate=0.5, exploration_outcomes=15, record_outcomes=True)
    outputs = await _route(resources, stream, context, feedback=True)
    explored_at = [i for i, o in enumerate(outputs) if _explored(o) == NEW]
    assert explored_at
    stats = resources.model_stats(None)
    assert stats[NEW].count >= 15
    # After its 15th ground-truth outcome, no query explores it again...
    counted, last = 0, None
    for i, output in enumerate(outputs):
        if output.get("model") == NEW:
            counted += 1
            if counted == 15:
                last = i
                break
    assert last is not None and all(i <= last for i in explored_at)
    # ...and it is then planned on its predictions (it is the strongest model).
    after = outputs[last + 1 :]
    planned = [o for o in after if any(c["model"] == NEW for c in o["candidates"])]
    assert planned and not any(_explored(o) for o in planned)
    assert all(c["source"] != "exploration" for o in planned for c in o["candidates"])


async def test_the_judges_read_the_prediction_not_the_draw() -> None:
    resources, stream = _world_without_new_model()
    context = Context(exploration_rate=1.0, judges=("memory_prior",), on_abstain="return")
    outputs = await _route(resources, stream[:10], context)
    for output in outputs:
        assert _explored(output) == NEW
        attempt = next(i for i, a in enumerate(output["attempts"]) if a["model"] == NEW)
        option = next(c for c in output["candidates"] if c["model"] == NEW)
        assert option["source"] == "exploration"
        verdicts = [
            v
            for v in output["verdicts"]
            if v["attempt"] == attempt and v["judge"] == "memory_prior"
        ]
        # No history: the memory's prediction is the default prior, whatever the draw.
        assert verdicts and all(v["score"] == pytest.approx(option["p_success"]) for v in verdicts)
        assert option["p_success"] == pytest.approx(resources.memory.settings.default_prior)


def test_thompson_sampling_prefers_the_better_posterior_and_is_seeded() -> None:
    good, bad = Evidence(8.0, 7.0), Evidence(8.0, 1.0)
    picks = [pick(f"q{i}", {"good": good, "bad": bad}) for i in range(200)]
    assert picks.count("good") > 180
    assert picks == [pick(f"q{i}", {"good": good, "bad": bad}) for i in range(200)]
    assert pick("q", {}) is None


def test_the_explored_model_is_called_first_and_the_plan_follows() -> None:
    def option(model: str, cost: float, stage: int) -> Any:
        return {
            "model": model,
            "stage": stage,
            "p_success": 0.5,
            "exploration_bonus": 0.0,
            "expected_cost_usd": cost,
            "cost_bound_usd": cost,
            "source": "memory",
        }

    plan = [option("a", 1.0, 0), option("b", 1.5, 0), option("c", 3.0, 1), option("d", 9.0, 2)]
    new = option("n", 5.0, 0)
    out = explore_plan(plan, new, Context(max_levels=3))
    assert [(c["model"], c["stage"]) for c in out] == [("n", 0), ("a", 1), ("b", 1), ("c", 2)]
    assert out[0]["source"] == "exploration" and out[1]["source"] == "memory"
    assert [c["model"] for c in explore_plan(plan, new, Context(max_levels=1))] == ["n"]
    already = explore_plan([*plan[:2], new], new, Context(max_levels=3))
    assert [c["model"] for c in already] == ["n", "a", "b"]
