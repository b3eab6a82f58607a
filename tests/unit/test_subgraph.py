"""The router embedded in an agent graph (examples/agent.py)."""

from __future__ import annotations

from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage

from emafusion.graph import Context, make_graph
from emafusion.nodes.resources import RouterResources
from emafusion.stores.recordings import RecordSet
from examples.agent import build_agent


async def test_agent_calls_the_router_without_leaking_its_state(
    tiny_resources: RouterResources, synthetic_records: RecordSet
) -> None:
    record = synthetic_records.split("test")[5]
    agent = build_agent(make_graph(tiny_resources))
    context = Context(record_outcomes=False)
    result = await agent.ainvoke({"messages": [HumanMessage(record.query)]}, context=context)
    assert set(result) == {"messages", "routed_by"}
    messages = result["messages"]
    # One question, one answer: the reducer duplicated nothing.
    assert [type(m) for m in messages] == [HumanMessage, AIMessage]
    answer = messages[1]
    model = answer.response_metadata["routed_model"]
    assert answer.content == record.outcomes[model].response
    assert model in result["routed_by"]


async def test_router_events_and_tokens_visible_from_the_parent(
    tiny_resources: RouterResources, synthetic_records: RecordSet
) -> None:
    record = synthetic_records.split("test")[6]
    agent = build_agent(make_graph(tiny_resources))
    context = Context(record_outcomes=False)
    custom_namespaces: set[tuple[str, ...]] = set()
    custom_events: list[str] = []
    tokens: list[AIMessageChunk] = []
    parent_updates: list[dict[str, object]] = []
    async for namespace, mode, payload in agent.astream(
        {"messages": [HumanMessage(record.query)]},
        context=context,
        stream_mode=["custom", "messages", "updates"],
        subgraphs=True,
    ):
        if mode == "custom":
            custom_namespaces.add(namespace)
            custom_events.append(payload["emafusion"])
        elif mode == "messages" and isinstance(payload[0], AIMessageChunk):
            tokens.append(payload[0])
        elif mode == "updates" and namespace == ():
            parent_updates.append(payload)
    assert custom_events[0] == "classified" and custom_events[-1] == "returned"
    assert all(ns and ns[0].startswith("ask_router") for ns in custom_namespaces)
    assert tokens
    # The parent sees only its own node's update, not the router's internal keys.
    assert [list(u) for u in parent_updates] == [["ask_router"]]
    assert set(parent_updates[0]["ask_router"]) == {"messages", "routed_by"}  # type: ignore[arg-type]
