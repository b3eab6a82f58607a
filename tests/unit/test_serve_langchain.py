"""LangChain: ChatOpenAI(base_url=...) against the server on 127.0.0.1, and ChatEmaFusion
(the router as a chat model) on its own and inside a small LangGraph agent."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI
from langgraph.graph import END, START, MessagesState, StateGraph

from emafusion.nodes.resources import RouterResources
from emafusion.serve import ChatEmaFusion, RouterUnanswered
from emafusion.serve.app import create_app
from emafusion.serve.background import BackgroundServer
from emafusion.serve.settings import ApiKeys, ServeSettings
from emafusion.stores.recordings import RecordSet
from tests import synthetic

KEY = "langchain-test-key-0123456789"


@pytest.fixture
def resources(synthetic_records: RecordSet) -> RouterResources:
    return synthetic.make_resources(synthetic_records)


@pytest.fixture
def server(resources: RouterResources) -> Iterator[BackgroundServer]:
    settings = ServeSettings(api_keys=ApiKeys.of([KEY]))
    with BackgroundServer(create_app(resources, settings)) as running:
        yield running


def _chat_openai(server: BackgroundServer, **kw: Any) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=f"{server.url}/v1",
        api_key=KEY,  # type: ignore[arg-type]
        model="emafusion",
        max_retries=0,
        **kw,
    )


def test_chat_openai_invokes_and_streams_with_usage(
    server: BackgroundServer, synthetic_records: RecordSet
) -> None:
    record = synthetic_records.split("test")[6]
    reply = _chat_openai(server).invoke(record.query)
    assert isinstance(reply, AIMessage)
    model = reply.response_metadata["model_name"]
    assert model in synthetic.MODELS
    assert reply.text == record.outcomes[model].response
    assert reply.usage_metadata is not None and reply.usage_metadata["input_tokens"] >= 90
    chunks = list(_chat_openai(server, stream_usage=True).stream(record.query))
    assert len([c for c in chunks if c.text]) > 1
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk  # type: ignore[assignment]
    assert total.text == reply.text
    assert total.usage_metadata is not None
    assert total.usage_metadata["total_tokens"] == reply.usage_metadata["total_tokens"]
    assert total.response_metadata["model_name"] == model


async def test_chat_openai_async_and_a_wrong_key(
    server: BackgroundServer, synthetic_records: RecordSet
) -> None:
    import openai

    record = synthetic_records.split("test")[7]
    reply = await _chat_openai(server).ainvoke(record.query)
    assert reply.text == record.outcomes[reply.response_metadata["model_name"]].response
    bad = ChatOpenAI(
        base_url=f"{server.url}/v1",
        api_key="wrong-key-0123456789",
        model="emafusion",
        max_retries=0,
    )
    with pytest.raises(openai.AuthenticationError):
        await bad.ainvoke(record.query)


def test_chat_emafusion_invokes_with_routing_metadata(
    resources: RouterResources, synthetic_records: RecordSet
) -> None:
    record = synthetic_records.split("test")[8]
    model = ChatEmaFusion(source=resources)
    reply = model.invoke([HumanMessage(record.query)])
    info = reply.response_metadata["emafusion"]
    chosen = reply.response_metadata["model_name"]
    assert chosen == info["model"] == info["escalation_path"][-1]
    assert reply.text == record.outcomes[chosen].response
    assert info["run_id"] and info["cost_usd"] > 0 and info["cost_estimated"] is False
    calls = len(info["escalation_path"])
    assert reply.usage_metadata == {
        "input_tokens": 90 * calls,
        "output_tokens": 10 * calls,
        "total_tokens": 100 * calls,
    }
    restricted = ChatEmaFusion(source=resources, models=["mid"]).invoke(record.query)
    assert restricted.response_metadata["emafusion"]["escalation_path"] == ["mid"]


async def test_chat_emafusion_streams_async(
    resources: RouterResources, synthetic_records: RecordSet
) -> None:
    record = synthetic_records.split("test")[9]
    model = ChatEmaFusion(source=resources, chunk_words=2)
    chunks = [c async for c in model.astream(record.query)]
    assert len(chunks) > 2 and all(isinstance(c, AIMessageChunk) for c in chunks)
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    chosen = total.response_metadata["model_name"]
    assert total.text == record.outcomes[chosen].response
    assert total.usage_metadata is not None and total.usage_metadata["output_tokens"] >= 10
    assert total.response_metadata["emafusion"]["model"] == chosen
    sync_chunks = list(model.stream(record.query))
    assert "".join(c.text for c in sync_chunks) == total.text
    with pytest.raises(RouterUnanswered, match="no model answered") as failed:
        await model.ainvoke("never recorded")
    assert {f["model"] for f in failed.value.reply.failures} == set(synthetic.MODELS)
    with pytest.raises(ValueError, match="tool calls are not routed"):
        await model.ainvoke([HumanMessage("q"), ToolMessage("x", tool_call_id="1")])


async def test_chat_emafusion_inside_a_langgraph_agent(
    resources: RouterResources, synthetic_records: RecordSet
) -> None:
    """An agent that asks the router, then checks the answer names an option: the router
    stands in for ChatOpenAI, and the agent's message stream carries its tokens only."""
    record = synthetic_records.split("test")[10]
    llm = ChatEmaFusion(source=resources)

    async def ask(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await llm.ainvoke(state["messages"])]}

    def check(state: MessagesState) -> dict[str, Any]:
        answer = state["messages"][-1].text
        verdict = "commits to an option" if "(" in answer else "no option"
        return {"messages": [AIMessage(f"checked: {verdict}")]}

    agent = (
        StateGraph(MessagesState)
        .add_node("ask", ask)
        .add_node("check", check)
        .add_edge(START, "ask")
        .add_edge("ask", "check")
        .add_edge("check", END)
        .compile()
    )
    tokens: list[tuple[str, str]] = []
    final: dict[str, Any] = {}
    async for mode, payload in agent.astream(
        {"messages": [HumanMessage(record.query)]}, stream_mode=["messages", "values"]
    ):
        if mode == "messages":
            chunk, metadata = payload
            if chunk.text:
                tokens.append((metadata["langgraph_node"], chunk.text))
        else:
            final = payload
    answer = final["messages"][1]
    chosen = answer.response_metadata["model_name"]
    assert answer.text == record.outcomes[chosen].response
    assert final["messages"][2].text == "checked: commits to an option"
    # The router's tokens reach the agent's stream once, from the agent's node; the
    # router's own model calls inside it do not leak into the agent's stream.
    streamed = "".join(text for node, text in tokens if node == "ask")
    assert streamed == answer.text


async def test_the_routers_own_model_calls_stay_out_of_an_agents_subgraph_stream(
    resources: RouterResources, synthetic_records: RecordSet
) -> None:
    record = synthetic_records.split("test")[11]
    llm = ChatEmaFusion(source=resources, min_confidence=1.0)  # every planned model is called

    async def ask(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await llm.ainvoke(state["messages"])]}

    agent = StateGraph(MessagesState).add_node("ask", ask).add_edge(START, "ask").compile()
    texts = []
    async for _namespace, _mode, payload in agent.astream(
        {"messages": [HumanMessage(record.query)]}, stream_mode=["messages"], subgraphs=True
    ):
        texts.append(payload[0].text)
    reply = await llm.ainvoke(record.query)
    assert "".join(texts) == reply.text
