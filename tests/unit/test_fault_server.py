"""Each fault of the fixture server, as the real openai client and ChatOpenAI see it.

These tests pin down what a retry policy and an "answer counts only if complete" check
must handle; the table in tests/fixtures/openai_server/__init__.py summarizes them.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
from langchain_core.exceptions import (
    ModelAPIError,
    ModelConnectionError,
    ModelRateLimitError,
    ModelTimeoutError,
)
from langchain_core.messages import AIMessageChunk
from langchain_openai import ChatOpenAI
from openai.types.chat import ChatCompletionMessageParam
from pydantic import SecretStr

from tests.fixtures.openai_server import (
    FAULT_KINDS,
    Fault,
    FixtureModel,
    OpenAIFixtureServer,
)

REPLY = "one two three four five six seven eight nine ten eleven twelve"
PROMPT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "count"}]


def model(*faults: Fault) -> FixtureModel:
    return FixtureModel(reply=REPLY, prompt_tokens=5, completion_tokens=12, faults=faults)


@pytest.fixture
def server() -> Iterator[OpenAIFixtureServer]:
    models: dict[str, FixtureModel] = {"ok": model()}
    models.update({kind: model(Fault.always(kind)) for kind in FAULT_KINDS})
    models["timeout"] = model(Fault.always("timeout", delay_s=30))
    models["slow_tokens"] = model(Fault.always("slow_tokens", delay_s=0.15))
    with OpenAIFixtureServer(models) as running:
        yield running


def sdk(server: OpenAIFixtureServer, **options: Any) -> openai.OpenAI:
    options = {"max_retries": 0, "timeout": 5.0, **options}
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="test", **options)


def create(server: OpenAIFixtureServer, name: str, **options: Any) -> Any:
    return sdk(server, **options).chat.completions.create(model=name, messages=PROMPT)


def sdk_stream(server: OpenAIFixtureServer, name: str, sink: list[Any], **options: Any) -> None:
    """Streams into `sink` (kept by the caller when iteration raises)."""
    stream = sdk(server, **options).chat.completions.create(
        model=name,
        messages=PROMPT,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        sink.append(chunk)


@pytest.fixture
async def async_http() -> AsyncIterator[openai.DefaultAsyncHttpxClient]:
    # A client per test: langchain-openai's default async client is cached process-wide,
    # and a keep-alive connection pooled under an earlier test's (closed) event loop fails.
    client = openai.DefaultAsyncHttpxClient()
    yield client
    await client.aclose()


def chat(server: OpenAIFixtureServer, name: str, **options: Any) -> ChatOpenAI:
    options = {"max_retries": 0, "timeout": 5.0, "stream_usage": True, **options}
    return ChatOpenAI(model=name, base_url=f"{server.url}/v1", api_key=SecretStr("t"), **options)


async def astream(model: ChatOpenAI, sink: list[AIMessageChunk]) -> AIMessageChunk:
    async for chunk in model.astream("count"):
        assert isinstance(chunk, AIMessageChunk)
        sink.append(chunk)
    total = sink[0]
    for chunk in sink[1:]:
        total = total + chunk
    return total


def causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


# --- the baseline: what a complete answer looks like ---------------------------------------


async def test_a_complete_answer_has_finish_reason_and_usage(
    server: OpenAIFixtureServer, async_http: Any
) -> None:
    reply = chat(server, "ok").invoke("count")
    assert reply.content == REPLY
    assert reply.response_metadata["finish_reason"] == "stop"
    assert reply.usage_metadata is not None and reply.usage_metadata["output_tokens"] == 12
    total = await astream(chat(server, "ok", http_async_client=async_http), [])
    assert total.content == REPLY and total.response_metadata["finish_reason"] == "stop"
    assert total.usage_metadata is not None and total.usage_metadata["total_tokens"] == 17
    assert server.counts() == {"ok": {"requests": 2, "answer": 2}}


# --- status errors ------------------------------------------------------------------------


def test_http500(server: OpenAIFixtureServer) -> None:
    with pytest.raises(openai.InternalServerError) as raw:
        create(server, "http500")
    assert raw.value.status_code == 500
    with pytest.raises(openai.InternalServerError) as wrapped:
        chat(server, "http500").invoke("count")
    assert isinstance(wrapped.value, ModelAPIError)  # langchain-openai's OpenAIAPIError
    assert server.count("http500", "http500") == 2


async def test_rate_limit_carries_retry_after(server: OpenAIFixtureServer, async_http: Any) -> None:
    server.set_faults("rate_limit", Fault.always("rate_limit", retry_after="7"))
    with pytest.raises(openai.RateLimitError) as raw:
        create(server, "rate_limit")
    assert raw.value.status_code == 429
    assert raw.value.response.headers["retry-after"] == "7"
    assert isinstance(raw.value.body, dict) and raw.value.body["code"] == "rate_limit_exceeded"
    with pytest.raises(openai.RateLimitError) as wrapped:
        chat(server, "rate_limit").invoke("count")
    assert isinstance(wrapped.value, ModelRateLimitError)
    assert wrapped.value.response.headers["retry-after"] == "7"
    with pytest.raises(openai.RateLimitError):
        await astream(chat(server, "rate_limit", http_async_client=async_http), [])
    assert server.count("rate_limit") == 3


def test_the_sdk_retries_a_rate_limit_after_the_header_delay(
    server: OpenAIFixtureServer,
) -> None:
    server.set_faults("rate_limit", Fault.first(2, "rate_limit", retry_after="0.2"))
    started = time.monotonic()
    reply = create(server, "rate_limit", max_retries=3)
    assert reply.choices[0].message.content == REPLY
    assert time.monotonic() - started >= 0.4  # two waits of the server's Retry-After
    assert server.counts()["rate_limit"] == {"requests": 3, "rate_limit": 2, "answer": 1}


# --- transport faults ---------------------------------------------------------------------


async def test_timeout(server: OpenAIFixtureServer, async_http: Any) -> None:
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError) as raw:
        create(server, "timeout", timeout=0.3)
    assert time.monotonic() - started < 3
    # A timeout IS an APIConnectionError subclass: classify timeouts first.
    assert isinstance(raw.value, openai.APIConnectionError)
    with pytest.raises(openai.APITimeoutError) as wrapped:
        chat(server, "timeout", timeout=0.3).invoke("count")
    assert isinstance(wrapped.value, ModelTimeoutError)
    with pytest.raises(ModelTimeoutError):
        await astream(chat(server, "timeout", timeout=0.3, http_async_client=async_http), [])


async def test_reset_before_any_response(server: OpenAIFixtureServer, async_http: Any) -> None:
    with pytest.raises(openai.APIConnectionError) as raw:
        create(server, "reset")
    assert not isinstance(raw.value, openai.APITimeoutError)
    assert any(isinstance(c, ConnectionResetError) for c in causes(raw.value))
    with pytest.raises(openai.APIConnectionError) as wrapped:
        chat(server, "reset").invoke("count")
    assert isinstance(wrapped.value, ModelConnectionError)
    with pytest.raises(ModelConnectionError):
        await astream(chat(server, "reset", http_async_client=async_http), [])
    assert server.count("reset", "reset") == 3


async def test_reset_mid_stream(server: OpenAIFixtureServer, async_http: Any) -> None:
    server.set_faults("reset_mid_stream", Fault.always("reset_mid_stream", chunks_before=3))
    received: list[Any] = []
    with pytest.raises(openai.APIConnectionError):
        sdk_stream(server, "reset_mid_stream", received)
    assert len(received) <= 3  # what arrived before the reset, never a finish
    assert all(c.choices[0].finish_reason is None for c in received)
    chunks: list[AIMessageChunk] = []
    with pytest.raises(ModelConnectionError):
        await astream(chat(server, "reset_mid_stream", http_async_client=async_http), chunks)
    assert len(chunks) <= 3
    # Not streaming: half a body, then the reset.
    with pytest.raises(openai.APIConnectionError):
        create(server, "reset_mid_stream")


# --- malformed 200s -----------------------------------------------------------------------


async def test_invalid_json_escapes_as_a_json_error(
    server: OpenAIFixtureServer, async_http: Any
) -> None:
    # Not an openai.APIError: a retry policy keyed on the SDK's classes misses it.
    with pytest.raises(json.JSONDecodeError) as raw:
        create(server, "invalid_json")
    assert not isinstance(raw.value, openai.OpenAIError)
    received: list[Any] = []
    with pytest.raises(json.JSONDecodeError):
        sdk_stream(server, "invalid_json", received)
    assert len(received) == 2  # the chunks before the broken event
    with pytest.raises(json.JSONDecodeError):
        chat(server, "invalid_json").invoke("count")
    with pytest.raises(json.JSONDecodeError):
        await astream(chat(server, "invalid_json", http_async_client=async_http), [])


async def test_truncated_stream_ends_quietly_without_finish_reason(
    server: OpenAIFixtureServer, async_http: Any
) -> None:
    server.set_faults("truncated_stream", Fault.always("truncated_stream", chunks_before=3))
    received: list[Any] = []
    sdk_stream(server, "truncated_stream", received)  # no exception
    assert len(received) == 3
    assert [c.choices[0].finish_reason for c in received] == [None, None, None]
    assert received[-1].usage is None
    # ChatOpenAI.astream: no exception either; the message is a prefix of the answer, and
    # only the missing finish_reason (and usage) tell it apart from a complete one.
    total = await astream(chat(server, "truncated_stream", http_async_client=async_http), [])
    assert isinstance(total.content, str) and REPLY.startswith(total.content)
    assert total.content != REPLY
    assert "finish_reason" not in total.response_metadata
    assert total.usage_metadata is None
    # ainvoke with streaming=True aggregates the same stream: the same quiet prefix.
    streamed = chat(server, "truncated_stream", streaming=True, http_async_client=async_http)
    message = await streamed.ainvoke("count")
    assert message.content == total.content
    assert "finish_reason" not in message.response_metadata
    # Not streaming, a body shorter than its Content-Length is a connection error.
    with pytest.raises(openai.APIConnectionError) as raw:
        create(server, "truncated_stream")
    assert "incomplete" in repr(causes(raw.value)) or "complete message body" in repr(
        causes(raw.value)
    )


async def test_empty_choices(server: OpenAIFixtureServer, async_http: Any) -> None:
    completion = create(server, "empty_choices")
    assert completion.choices == [] and completion.usage is not None
    with pytest.raises(IndexError):  # langchain-openai indexes generations[0]
        chat(server, "empty_choices").invoke("count")
    total = await astream(chat(server, "empty_choices", http_async_client=async_http), [])
    assert total.content == "" and "finish_reason" not in total.response_metadata
    assert total.usage_metadata is not None  # usage still arrives, on its own chunk


async def test_missing_usage(server: OpenAIFixtureServer, async_http: Any) -> None:
    completion = create(server, "no_usage")
    assert completion.usage is None and completion.choices[0].finish_reason == "stop"
    reply = chat(server, "no_usage").invoke("count")
    assert reply.content == REPLY and reply.usage_metadata is None
    assert reply.response_metadata["finish_reason"] == "stop"
    total = await astream(chat(server, "no_usage", http_async_client=async_http), [])
    assert total.content == REPLY and total.usage_metadata is None
    assert total.response_metadata["finish_reason"] == "stop"


async def test_slow_tokens_arrive_spaced_and_complete(
    server: OpenAIFixtureServer, async_http: Any
) -> None:
    arrivals: list[float] = []
    chunks: list[AIMessageChunk] = []
    started = time.monotonic()
    async for chunk in chat(server, "slow_tokens", http_async_client=async_http).astream("x"):
        arrivals.append(time.monotonic() - started)
        assert isinstance(chunk, AIMessageChunk)
        chunks.append(chunk)
    gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:], strict=False)]
    assert len(chunks) >= 5 and sum(gaps) >= 0.15 * (len(chunks) - 2)
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    assert total.content == REPLY and total.response_metadata["finish_reason"] == "stop"


async def test_slow_tokens_past_the_read_timeout(
    server: OpenAIFixtureServer, async_http: Any
) -> None:
    server.set_faults("slow_tokens", Fault.always("slow_tokens", delay_s=1.0))
    received: list[Any] = []
    with pytest.raises(openai.APITimeoutError):
        sdk_stream(server, "slow_tokens", received, timeout=0.3)
    assert len(received) == 1  # the first chunk comes at once; the next is too late
    chunks: list[AIMessageChunk] = []
    model = chat(server, "slow_tokens", timeout=0.3, http_async_client=async_http)
    with pytest.raises(ModelTimeoutError):
        await astream(model, chunks)
    assert len(chunks) == 1
    with pytest.raises(openai.APITimeoutError):  # not streaming: the whole answer is late
        create(server, "slow_tokens", timeout=0.3)


# --- schedules and counts -----------------------------------------------------------------


def test_first_n_then_answers_and_on_given_requests(server: OpenAIFixtureServer) -> None:
    server.set_faults("ok", Fault.first(2, "http500"), Fault.on({3}, "rate_limit"))
    outcomes = []
    for _ in range(5):
        try:
            create(server, "ok")
            outcomes.append("answer")
        except openai.InternalServerError:
            outcomes.append("http500")
        except openai.RateLimitError:
            outcomes.append("rate_limit")
    assert outcomes == ["http500", "http500", "answer", "rate_limit", "answer"]
    assert server.counts()["ok"] == {"requests": 5, "http500": 2, "answer": 2, "rate_limit": 1}


def test_probabilistic_faults_follow_the_seed() -> None:
    def run(seed: int) -> list[str]:
        models = {"m": model(Fault.sometimes("http500", 0.5))}
        with OpenAIFixtureServer(models, seed=seed) as running:
            client = sdk(running)
            seen = []
            for _ in range(24):
                try:
                    client.chat.completions.create(model="m", messages=PROMPT)
                    seen.append("answer")
                except openai.InternalServerError:
                    seen.append("http500")
            assert running.count("m", "http500") == seen.count("http500")
            assert running.count("m") == 24
            return seen

    first = run(seed=7)
    assert run(seed=7) == first  # repeatable
    assert 4 <= first.count("http500") <= 20  # about half
    assert run(seed=8) != first


def test_set_faults_restarts_the_schedule_and_counts_reset(server: OpenAIFixtureServer) -> None:
    server.set_faults("ok", Fault.first(1, "http500"))
    with pytest.raises(openai.InternalServerError):
        create(server, "ok")
    create(server, "ok")
    server.set_faults("ok", Fault.first(1, "http500"))
    with pytest.raises(openai.InternalServerError):
        create(server, "ok")
    assert server.count("ok", "http500") == 2
    server.reset_counts()
    assert server.count("ok") == 0 and server.counts() == {}
    with pytest.raises(ValueError, match="unknown outcome"):
        server.count("ok", "explode")


def test_fault_validation() -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        Fault("explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="probability"):
        Fault.sometimes("http500", 1.5)


def test_stop_is_prompt_while_faults_sleep() -> None:
    models = {"slow": model(Fault.always("timeout", delay_s=30))}
    running = OpenAIFixtureServer(models).start()
    try:
        with pytest.raises(openai.APITimeoutError):
            create(running, "slow", timeout=0.3)
    finally:
        started = time.monotonic()
        running.stop()
        assert time.monotonic() - started < 1
