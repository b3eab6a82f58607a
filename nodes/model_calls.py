"""One model call: a timeout, retries by error type, and a check that the answer is whole.

Transient faults (dropped connections, rate limits, 5xx) are retried with exponential
backoff, honouring the server's Retry-After up to a cap. Timeouts are their own kind and
are not retried (the next model is a better use of the time). Anything else (4xx, a
missing recording) fails at once. A reply counts only when it is complete: a finish
reason, and a non-empty message unless it replays a recording.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import RunnableConfig

from emafusion.stores.providers import ModelUnavailableError
from emafusion.stores.redaction import redact

FailureKind = Literal["timeout", "connection", "rate_limit", "server", "client", "incomplete"]

MAX_TRIES = 3  # first call + two retries of a transient fault
BACKOFF_S = 0.2
MAX_RETRY_AFTER_S = 10.0
ERROR_TEXT_CHARS = 300


class IncompleteAnswerError(RuntimeError):
    """The provider's reply ended without a finish reason, or carried no text."""


@dataclass
class CallFailure(Exception):
    kind: FailureKind | str
    error: str  # redacted
    tries: int
    unavailable: bool = False

    def describe(self) -> str:
        retried = f" after {self.tries} tries" if self.tries > 1 else ""
        return f"{self.kind}{retried}: {self.error}"


def _status_code(error: BaseException) -> int | None:
    status = getattr(error, "status_code", None)
    if isinstance(status, int):
        return status
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def classify_error(error: BaseException) -> FailureKind | str:
    """The kind of a failed call, by exception type (and HTTP status)."""
    import httpx
    import openai

    if isinstance(error, asyncio.TimeoutError | TimeoutError | openai.APITimeoutError):
        return "timeout"
    if isinstance(error, httpx.TimeoutException):
        return "timeout"
    if isinstance(error, IncompleteAnswerError):
        return "incomplete"
    if isinstance(error, openai.RateLimitError):
        return "rate_limit"
    if isinstance(error, openai.APIConnectionError | httpx.TransportError | ConnectionError):
        return "connection"
    status = _status_code(error)
    if status is not None:
        if status == 429:
            return "rate_limit"
        return "server" if status >= 500 else "client"
    if isinstance(error, ModelUnavailableError):
        return "unavailable"
    return type(error).__name__


# A truncated stream is most often a dropped connection: worth another try too.
TRANSIENT: frozenset[str] = frozenset({"connection", "rate_limit", "server", "incomplete"})


def retry_after_s(error: BaseException) -> float | None:
    """The server's Retry-After (seconds or an HTTP date), if it sent one."""
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        import time

        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


def check_complete(reply: BaseMessage, replayed: bool) -> AIMessage:
    if not isinstance(reply, AIMessage):
        raise IncompleteAnswerError(f"expected an AI message, got {type(reply).__name__}")
    meta = reply.response_metadata or {}
    finish = meta.get("finish_reason") or meta.get("stop_reason")
    if not finish:
        raise IncompleteAnswerError("the reply ended without a finish reason (truncated stream)")
    if finish in ("content_filter", "error"):
        raise IncompleteAnswerError(f"the reply stopped with finish reason {finish!r}")
    # A recorded empty answer is what the model said (and is scored as recorded); a live
    # empty reply is a failed call.
    if not replayed and not reply.text.strip() and not reply.tool_calls:
        raise IncompleteAnswerError("the reply has no text")
    return reply


async def call_model(
    model: BaseChatModel,
    messages: Sequence[BaseMessage],
    *,
    timeout_s: float,
    config: RunnableConfig | None = None,
    replayed: bool = False,
    max_tries: int = MAX_TRIES,
) -> AIMessage:
    """The model's complete reply, or `CallFailure` saying what went wrong (redacted)."""
    tries = 0
    while True:
        tries += 1
        try:
            reply: Any = await asyncio.wait_for(
                model.ainvoke(list(messages), config=config), timeout=timeout_s
            )
            return check_complete(reply, replayed)
        except Exception as exc:  # noqa: BLE001 - every provider fault becomes a failure
            kind = classify_error(exc)
            if kind in TRANSIENT and tries < max_tries:
                wait = retry_after_s(exc)
                if wait is None:
                    wait = BACKOFF_S * 2 ** (tries - 1) * (0.5 + random.random())
                await asyncio.sleep(min(wait, MAX_RETRY_AFTER_S))
                continue
            text = redact(str(exc))[:ERROR_TEXT_CHARS] or type(exc).__name__
            raise CallFailure(
                kind, text, tries, unavailable=isinstance(exc, ModelUnavailableError)
            ) from exc
