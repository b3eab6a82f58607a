"""One model call: errors classified by type, Retry-After honoured, incomplete answers
refused, provider text redacted."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage

from emafusion.nodes.model_calls import (
    CallFailure,
    IncompleteAnswerError,
    call_model,
    check_complete,
    classify_error,
    retry_after_s,
)
from emafusion.stores.providers import NoRecordingError
from emafusion.stores.redaction import REDACTED, redact, register_secret

REQUEST = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")


def _status(code: int, headers: dict[str, str] | None = None) -> openai.APIStatusError:
    response = httpx.Response(code, headers=headers or {}, request=REQUEST)
    kinds: dict[int, type[openai.APIStatusError]] = {
        429: openai.RateLimitError,
        500: openai.InternalServerError,
        400: openai.BadRequestError,
    }
    return kinds.get(code, openai.APIStatusError)("boom", response=response, body=None)


def test_errors_are_classified_by_type_not_by_name() -> None:
    class OpenAIConnectionError(openai.APIConnectionError):  # a provider's own subclass
        pass

    assert classify_error(OpenAIConnectionError(request=REQUEST)) == "connection"
    assert classify_error(httpx.RemoteProtocolError("reset")) == "connection"
    assert classify_error(ConnectionResetError()) == "connection"
    assert classify_error(openai.APITimeoutError(request=REQUEST)) == "timeout"
    assert classify_error(TimeoutError()) == "timeout"
    assert classify_error(_status(429)) == "rate_limit"
    assert classify_error(_status(500)) == "server"
    assert classify_error(_status(400)) == "client"
    assert classify_error(IncompleteAnswerError("cut")) == "incomplete"
    assert classify_error(NoRecordingError("m", "id", None)) == "unavailable"


def test_retry_after_in_seconds_milliseconds_or_a_date() -> None:
    assert retry_after_s(_status(429, {"retry-after": "3"})) == 3.0
    assert retry_after_s(_status(429, {"retry-after-ms": "250"})) == 0.25
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 <= (retry_after_s(_status(429, {"retry-after": date})) or 0) <= 31
    assert retry_after_s(_status(429)) is None
    assert retry_after_s(RuntimeError()) is None


def test_only_complete_answers_count() -> None:
    whole = AIMessage("B", response_metadata={"finish_reason": "stop"})
    assert check_complete(whole, replayed=False) is whole
    with pytest.raises(IncompleteAnswerError, match="without a finish reason"):
        check_complete(AIMessage("B"), replayed=False)
    with pytest.raises(IncompleteAnswerError, match="no text"):
        check_complete(AIMessage("", response_metadata={"finish_reason": "stop"}), False)
    with pytest.raises(IncompleteAnswerError, match="content_filter"):
        check_complete(AIMessage("x", response_metadata={"finish_reason": "content_filter"}), False)
    # A recorded empty answer is the model's answer.
    empty = AIMessage("", response_metadata={"finish_reason": "stop"})
    assert check_complete(empty, replayed=True) is empty


class _Flaky(GenericFakeChatModel):
    """Fails with `errors` in turn, then answers."""

    errors: list[Any] = []
    calls: int = 0

    async def ainvoke(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return AIMessage("ok", response_metadata={"finish_reason": "stop"})


async def test_transient_faults_are_retried_honouring_retry_after() -> None:
    model = _Flaky(messages=iter([]), errors=[_status(429, {"retry-after": "0.3"}), _status(503)])
    started = time.perf_counter()
    reply = await call_model(model, [HumanMessage("q")], timeout_s=5)
    assert reply.text == "ok" and model.calls == 3
    assert time.perf_counter() - started >= 0.3  # the server asked for 0.3 s


async def test_permanent_faults_and_timeouts_are_not_retried() -> None:
    bad = _Flaky(messages=iter([]), errors=[_status(400)])
    with pytest.raises(CallFailure) as caught:
        await call_model(bad, [HumanMessage("q")], timeout_s=5)
    assert caught.value.kind == "client" and bad.calls == 1
    slow = _Flaky(messages=iter([]), errors=[openai.APITimeoutError(request=REQUEST)])
    with pytest.raises(CallFailure) as caught:
        await call_model(slow, [HumanMessage("q")], timeout_s=5)
    assert caught.value.kind == "timeout" and slow.calls == 1
    down = _Flaky(messages=iter([]), errors=[_status(500)] * 5)
    with pytest.raises(CallFailure) as caught:
        await call_model(down, [HumanMessage("q")], timeout_s=5, max_tries=2)
    assert caught.value.tries == 2 and "after 2 tries" in caught.value.describe()


def test_credentials_are_redacted() -> None:
    register_secret("my-deployment-key-123456")
    text = (
        "401: key my-deployment-key-123456 rejected; Authorization: Bearer abcdefghijkl123; "
        'sent {"api_key": "sk-live-0123456789abcdef"} and api_key=hunter22hunter'
    )
    clean = redact(text)
    for secret in ("my-deployment-key-123456", "abcdefghijkl123", "sk-live-0123", "hunter22"):
        assert secret not in clean
    assert clean.count(REDACTED) >= 4
    assert redact("the answer is (B)") == "the answer is (B)"
