"""The OpenAI fixture server, driven over real HTTP by real ChatOpenAI clients."""

from __future__ import annotations

import json
import operator
import time
from collections.abc import Iterator, Sequence
from functools import reduce
from typing import Any

import httpx
import openai
import pytest
from langchain_core.messages import AIMessageChunk, BaseMessageChunk, HumanMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, SecretStr

from tests.fixtures.openai_server import FixtureModel, OpenAIFixtureServer, split_for_stream

ANSWER = "After careful thought about every option given, the answer is (B)."


class Verdict(BaseModel):
    score: float
    reason: str


def judge_reply(messages: list[dict[str, Any]]) -> str:
    """A judge whose score depends on the prompt, as a router's judge would."""
    prompt = str(messages[-1]["content"])
    score = 0.9 if "(B)" in prompt else 0.1
    return json.dumps({"score": score, "reason": f"saw {len(messages)} message(s)"})


MODELS = {
    "good": FixtureModel(reply=ANSWER, prompt_tokens=11, completion_tokens=7),
    "echo": FixtureModel(reply=lambda messages: f"echo: {messages[-1]['content']}"),
    "broken": FixtureModel(behaviour="error500"),
    "slow": FixtureModel(behaviour="timeout"),
    "judge": FixtureModel(behaviour="judge", reply=judge_reply),
}


@pytest.fixture(scope="module")
def server() -> Iterator[OpenAIFixtureServer]:
    with OpenAIFixtureServer(MODELS) as running:
        yield running


def chat(server: OpenAIFixtureServer, model: str, **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(
        model=model, base_url=f"{server.url}/v1", api_key=SecretStr("test"), max_retries=0, **kwargs
    )


def summed(chunks: Sequence[BaseMessageChunk]) -> AIMessageChunk:
    total = reduce(operator.add, chunks)
    assert isinstance(total, AIMessageChunk)
    return total


def assert_good_usage(message: Any) -> None:
    assert message.usage_metadata is not None
    assert message.usage_metadata["input_tokens"] == 11
    assert message.usage_metadata["output_tokens"] == 7
    assert message.usage_metadata["total_tokens"] == 18


def test_invoke_returns_content_and_configured_usage(server: OpenAIFixtureServer) -> None:
    reply = chat(server, "good").invoke("Which option?")
    assert reply.content == ANSWER
    assert_good_usage(reply)
    assert reply.response_metadata["finish_reason"] == "stop"
    assert reply.response_metadata["model_name"] == "good"


def test_callable_reply_and_default_token_counts(server: OpenAIFixtureServer) -> None:
    reply = chat(server, "echo").invoke("one two three")
    assert reply.content == "echo: one two three"
    assert reply.usage_metadata is not None
    # Rough word counts: the prompt has 3 words, the reply 4.
    assert reply.usage_metadata["input_tokens"] == 3
    assert reply.usage_metadata["output_tokens"] == 4


def test_stream_yields_several_chunks_with_usage(server: OpenAIFixtureServer) -> None:
    chunks = list(chat(server, "good", stream_usage=True).stream("Which option?"))
    assert sum(1 for chunk in chunks if chunk.content) >= 3
    total = summed(chunks)
    assert total.content == ANSWER
    assert_good_usage(total)
    body = server.chat_bodies("good")[-1]
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_stream_without_usage_option_sends_no_usage(server: OpenAIFixtureServer) -> None:
    chunks = list(chat(server, "good", stream_usage=False).stream("Which option?"))
    total = summed(chunks)
    assert total.content == ANSWER
    assert not total.usage_metadata


async def test_ainvoke_and_astream(server: OpenAIFixtureServer) -> None:
    model = chat(server, "good", stream_usage=True)
    reply = await model.ainvoke("Which option?")
    assert reply.content == ANSWER
    assert_good_usage(reply)
    chunks = [chunk async for chunk in model.astream("Which option?")]
    assert len(chunks) > 3
    total = summed(chunks)
    assert total.content == ANSWER
    assert_good_usage(total)


def test_error500_raises_internal_server_error_quickly(server: OpenAIFixtureServer) -> None:
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as caught:
        chat(server, "broken").invoke("hello")
    assert time.monotonic() - started < 2
    assert caught.value.status_code == 500


def test_unknown_model_is_404(server: OpenAIFixtureServer) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        chat(server, "no-such-model").invoke("hello")
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["code"] == "model_not_found"


def test_timeout_raises_and_stop_is_prompt() -> None:
    server = OpenAIFixtureServer(MODELS).start()
    try:
        started = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            chat(server, "slow", timeout=0.5).invoke("hello")
        assert time.monotonic() - started < 2
    finally:
        started = time.monotonic()
        server.stop()  # the handler is still "thinking" for 30 s; stop must not wait for it
        assert time.monotonic() - started < 1


def test_judge_default_structured_output(server: OpenAIFixtureServer) -> None:
    judge = chat(server, "judge").with_structured_output(Verdict)
    verdict = judge.invoke("Is the answer (B) right?")
    assert verdict == Verdict(score=0.9, reason="saw 1 message(s)")
    assert judge.invoke([HumanMessage("Is (A) right?")]) == Verdict(
        score=0.1, reason="saw 1 message(s)"
    )
    body = server.chat_bodies("judge")[-1]
    # The default method is json_schema: a strict response_format, no tools.
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["name"] == "Verdict"
    assert "tools" not in body


def test_judge_function_calling(server: OpenAIFixtureServer) -> None:
    judge = chat(server, "judge").with_structured_output(Verdict, method="function_calling")
    assert judge.invoke("Is (B) right?") == Verdict(score=0.9, reason="saw 1 message(s)")
    body = server.chat_bodies("judge")[-1]
    assert body["tools"][0]["function"]["name"] == "Verdict"
    assert body["tool_choice"]["function"]["name"] == "Verdict"


# langchain-openai's streamed json_schema path dumps the SDK's chunk objects, whose `parsed`
# field pydantic warns about; that is inside the client library, not the server.
@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning")
async def test_judge_async_and_streamed(server: OpenAIFixtureServer) -> None:
    judge = chat(server, "judge").with_structured_output(Verdict)
    assert await judge.ainvoke("(B)?") == Verdict(score=0.9, reason="saw 1 message(s)")
    streamed = [part async for part in judge.astream("(B)?")]
    assert streamed[-1] == Verdict(score=0.9, reason="saw 1 message(s)")
    tools_judge = chat(server, "judge", streaming=True).with_structured_output(
        Verdict, method="function_calling"
    )
    assert await tools_judge.ainvoke("(A)?") == Verdict(score=0.1, reason="saw 1 message(s)")


def test_requests_are_recorded(server: OpenAIFixtureServer) -> None:
    chat(server, "echo").invoke([HumanMessage("remember me")])
    record = server.requests[-1]
    assert record["method"] == "POST"
    assert record["path"] == "/v1/chat/completions"
    assert record["body"]["model"] == "echo"
    assert record["body"]["messages"] == [{"role": "user", "content": "remember me"}]


def test_raw_http_edges(server: OpenAIFixtureServer) -> None:
    with httpx.Client(base_url=server.url, timeout=2) as client:
        listing = client.get("/v1/models").json()
        assert {entry["id"] for entry in listing["data"]} == set(MODELS)
        assert client.get("/v1/nothing").status_code == 404
        assert client.put("/v1/chat/completions", json={}).status_code == 404
        assert client.post("/v1/embeddings", json={"model": "good"}).status_code == 404
        bad = client.post(
            "/v1/chat/completions",
            content=b"{not json",
            headers={"Content-Type": "application/json"},
        )
        assert bad.status_code == 400
        assert bad.json()["error"]["type"] == "invalid_request_error"
        # The server still answers after a malformed request.
        assert client.get("/v1/models").status_code == 200


def test_split_for_stream_round_trips() -> None:
    text = "  one two  three four five six seven "
    pieces = split_for_stream(text)
    assert "".join(pieces) == text
    assert len(pieces) == 3
    assert split_for_stream("") == []
