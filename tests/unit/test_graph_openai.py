"""A pool of ChatOpenAI models against an OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_core.messages import AIMessageChunk

from emafusion.graph import Context, make_graph
from emafusion.nodes.model_calls import MAX_TRIES
from emafusion.stores.pool import load_pool
from tests import synthetic
from tests.fixtures.openai_server import FixtureModel, OpenAIFixtureServer

QUESTION = "Which gas do plants absorb from the air?\nA) oxygen\nB) carbon dioxide\nC) helium"


@pytest.fixture
def server() -> Iterator[OpenAIFixtureServer]:
    models = {
        "flaky": FixtureModel(behaviour="error500"),
        "slow": FixtureModel(behaviour="timeout", delay_s=30),
        "steady": FixtureModel(reply="The answer is B.", prompt_tokens=40, completion_tokens=6),
    }
    with OpenAIFixtureServer(models) as running:
        yield running


def _pool_file(tmp_path: Path, base_url: str) -> Path:
    # Cheapest first: the router tries flaky, then slow, then steady.
    entries = [("flaky", 0.1), ("slow", 0.2), ("steady", 5.0)]
    text = "".join(
        f'[[models]]\nname = "{name}"\nprovider = "openai"\nbase_url = "{base_url}/v1"\n'
        f"input_per_1m = {price}\noutput_per_1m = {price}\ntimeout_s = 0.5\n\n"
        for name, price in entries
    )
    path = tmp_path / "live.toml"
    path.write_text(text)
    return path


async def test_graph_escalates_past_a_500_and_a_timeout(
    server: OpenAIFixtureServer, tmp_path: Path
) -> None:
    pool = load_pool(_pool_file(tmp_path, server.url))
    graph = make_graph(synthetic.make_resources(pool=pool, replay=False))
    result = await graph.ainvoke({"query": QUESTION}, context=Context(record_outcomes=False))
    assert result["escalation_path"] == ["flaky", "slow", "steady"]
    assert result["model"] == "steady"
    assert result["answer"] == "The answer is B."
    failed = {
        e["data"]["model"]: e["data"]["error"] for e in result["trace"] if e["event"] == "failed"
    }
    assert "InternalServerError" in failed["flaky"] or "500" in failed["flaky"]
    assert "timeout" in failed["slow"].lower()
    # A 5xx is retried (with backoff) up to MAX_TRIES calls; a timeout is not retried.
    assert len(server.chat_bodies("flaky")) == MAX_TRIES
    assert len(server.chat_bodies("slow")) == 1
    # steady's usage came from the server: 40 in, 6 out at $5 per 1M tokens.
    assert result["cost_usd"] == pytest.approx(46 * 5.0 / 1e6)


async def test_openai_tokens_stream_with_usage(server: OpenAIFixtureServer, tmp_path: Path) -> None:
    pool = load_pool(_pool_file(tmp_path, server.url))
    graph = make_graph(synthetic.make_resources(pool=pool, replay=False))
    context = Context(record_outcomes=False)
    chunks: list[AIMessageChunk] = []
    events: list[str] = []
    async for mode, payload in graph.astream(
        {"query": QUESTION}, context=context, stream_mode=["messages", "custom"]
    ):
        if mode == "custom":
            events.append(payload["emafusion"])
        elif isinstance(payload[0], AIMessageChunk) and payload[1].get("emafusion_model"):
            chunks.append(payload[0])
    assert events.count("failed") == 2 and events[-1] == "returned"
    total = chunks[0]
    for chunk in chunks[1:]:
        total += chunk
    assert total.content == "The answer is B."
    assert total.usage_metadata is not None
    assert total.usage_metadata["input_tokens"] == 40
    assert total.usage_metadata["output_tokens"] == 6
