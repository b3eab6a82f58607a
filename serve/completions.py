"""POST /v1/chat/completions: a request -> the run's settings -> a routed reply, as
OpenAI's `chat.completion` object or its SSE `chat.completion.chunk` stream.

Streaming releases the answer once the router has accepted it: a judged cascade reads a
whole answer before it trusts it, and a stream cannot take back tokens it has sent for an
answer the judges then escalate past. So the stream's chunks come after routing; the
status code is then known (an error is a plain error reply, never a broken stream).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from langgraph.graph.state import CompiledStateGraph
from pydantic import ValidationError

from emafusion.graph.context import Context, ContextError
from emafusion.nodes.resources import RouterResources
from emafusion.serve.conversation import (
    ConversationError,
    StickyBindings,
    conversation_key,
    conversation_query,
)
from emafusion.serve.errors import INVALID_REQUEST, RATE_LIMIT, UPSTREAM, APIError
from emafusion.serve.runner import RoutedReply, route
from emafusion.serve.schemas import ChatCompletionRequest
from emafusion.serve.settings import ServeSettings
from emafusion.stores.presets import DEFAULT_PRESET

MODEL_PREFIX = "emafusion"


@dataclasses.dataclass(frozen=True)
class Target:
    """What a request's `model` names: a preset, optionally one pool model."""

    requested: str  # the canonical name (a metrics label: only valid names get here)
    preset: str
    model: str | None = None


def served_models(resources: RouterResources) -> list[Target]:
    """The `model` names this server answers to: presets first, then the pool."""
    presets = resources.presets.names() if resources.presets else []
    targets = [Target(MODEL_PREFIX, DEFAULT_PRESET)]
    targets += [Target(f"{MODEL_PREFIX}-{p}", p) for p in presets if p != DEFAULT_PRESET]
    targets += [Target(name, DEFAULT_PRESET, name) for name in resources.pool.names]
    return targets


def resolve_target(name: str, resources: RouterResources) -> Target:
    if name == f"{MODEL_PREFIX}-{DEFAULT_PRESET}":
        name = MODEL_PREFIX
    for target in served_models(resources):
        if target.requested == name:
            return target
    shown = ", ".join(t.requested for t in served_models(resources))
    raise APIError(
        404,
        f"model {name[:200]!r} does not exist here; models: {shown} (GET /v1/models)",
        code="model_not_found",
        param="model",
    )


def run_settings(
    request: ChatCompletionRequest, target: Target, settings: ServeSettings
) -> dict[str, Any]:
    """The run's explicit settings: only what the request controls (the preset the rest)."""
    fields: dict[str, Any] = {"preset": target.preset}
    if request.max_cost_usd is not None:
        fields["budget_usd"] = request.max_cost_usd
    if request.min_confidence is not None:
        fields["escalation_threshold"] = request.min_confidence
    models = list(request.models) if request.models is not None else None
    if target.model is not None:
        if models is not None and target.model not in models:
            raise APIError(
                400,
                f"model {target.model!r} is not among the request's models {models}",
                code="invalid_request",
                param="models",
            )
        models = [target.model]
    if models is not None:
        fields["models"] = tuple(models)
    if settings.record_outcomes is not None:
        fields["record_outcomes"] = settings.record_outcomes
    return fields


def _context(fields: dict[str, Any]) -> Context:
    try:
        return Context(**fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise APIError(400, f"invalid run settings: {problems}", code="invalid_settings") from None


async def _route(graph: CompiledStateGraph, query: str, fields: dict[str, Any]) -> RoutedReply:
    try:
        return await route(graph, query, _context(fields))
    except ContextError as exc:
        raise APIError(400, f"invalid run settings: {exc}", code="invalid_settings") from None


def _merged(first: RoutedReply, second: RoutedReply) -> RoutedReply:
    """A pinned run that got no answer, then the re-routed one: costs and calls add up."""
    return dataclasses.replace(
        second,
        cost_usd=first.cost_usd + second.cost_usd,
        cost_estimated=first.cost_estimated or second.cost_estimated,
        judge_cost_usd=first.judge_cost_usd + second.judge_cost_usd,
        prompt_tokens=first.prompt_tokens + second.prompt_tokens,
        completion_tokens=first.completion_tokens + second.completion_tokens,
        usage_estimated=first.usage_estimated or second.usage_estimated,
        escalation_path=first.escalation_path + second.escalation_path,
        calls=first.calls + second.calls,
        failures=first.failures + second.failures,
        overhead_ms=first.overhead_ms + second.overhead_ms,
    )


async def answer(
    request: ChatCompletionRequest,
    resources: RouterResources,
    graph: CompiledStateGraph,
    settings: ServeSettings,
    sticky: StickyBindings,
    tenant: str,
    observe: Callable[[Target, RoutedReply], None],
) -> RoutedReply:
    """Route the request (keeping a sticky conversation on its model); errors as APIError.
    `observe` sees every routed reply, answered or not (the metrics)."""
    if len(request.messages) > settings.max_messages:
        raise APIError(
            400,
            f"messages: {len(request.messages)} messages, over this server's limit of "
            f"{settings.max_messages}. Fix: send fewer (drop or summarize earlier turns).",
            code="too_many_messages",
            param="messages",
        )
    turns = [(m.role, m.text) for m in request.messages]
    try:
        query = conversation_query(turns)
    except ConversationError as exc:
        raise APIError(400, str(exc), code="invalid_messages", param="messages") from None
    target = resolve_target(request.model, resources)
    fields = run_settings(request, target, settings)
    key = conversation_key(turns, request.conversation_id, tenant) if request.sticky else None
    pinned = sticky.get(key) if key is not None else None
    allowed = fields.get("models")
    if pinned is not None and (
        pinned not in resources.pool.names or (allowed is not None and pinned not in allowed)
    ):
        pinned = None
    if pinned is not None:
        reply = await _route(graph, query, {**fields, "models": (pinned,)})
        if not reply.answered:  # the pinned model is down: the conversation moves on
            reply = _merged(reply, await _route(graph, query, fields))
    else:
        reply = await _route(graph, query, fields)
    if key is not None:
        if reply.answered and reply.model is not None:
            sticky.bind(key, reply.model)
        kept = pinned is not None and reply.model == pinned
        reply = dataclasses.replace(
            reply, sticky={"conversation": key, "pinned": pinned, "kept": kept}
        )
    observe(target, reply)
    if not reply.answered:
        raise no_answer(reply, fields)
    return reply


def no_answer(reply: RoutedReply, fields: dict[str, Any]) -> APIError:
    info = reply.info()
    if reply.failures:
        listed = "; ".join(f"{f['model']}: {f['error']}" for f in reply.failures)
        return APIError(
            502,
            f"every model the router tried failed ({listed})",
            UPSTREAM,
            "all_models_failed",
            extra={"failures": reply.failures, "emafusion": info},
        )
    if "budget_usd" in fields:
        return APIError(
            400,
            f"no answer within max_cost_usd={fields['budget_usd']}: {reply.reason}. Fix: raise "
            f"max_cost_usd.",
            INVALID_REQUEST,
            "budget_too_low",
            param="max_cost_usd",
            extra={"emafusion": info},
        )
    return APIError(
        502, f"no answer: {reply.reason}", UPSTREAM, "no_answer", extra={"emafusion": info}
    )


def too_busy(limit: int) -> APIError:
    return APIError(
        429,
        f"this server is routing {limit} requests already (its limit). Fix: retry shortly.",
        RATE_LIMIT,
        "concurrency_limit",
        headers={"Retry-After": "1"},
    )


def usage(reply: RoutedReply) -> dict[str, Any]:
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.total_tokens,
    }


def completion(reply: RoutedReply) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{reply.run_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": reply.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.answer, "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": usage(reply),
        "emafusion": reply.info(),
    }


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def completion_chunks(reply: RoutedReply, include_usage: bool) -> list[bytes]:
    """The reply as OpenAI's SSE chunks: role, content pieces, finish (with the emafusion
    object), the usage chunk when asked, `[DONE]`."""
    base = {
        "id": f"chatcmpl-{reply.run_id}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": reply.model,
    }
    extra: dict[str, Any] = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, Any], finish: str | None = None, **more: Any) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return _sse({**base, "choices": [choice], **extra, **more})

    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"content": piece}) for piece in reply.chunks() if piece]
    info = reply.info()
    chunks.append(chunk({}, "stop", emafusion=info))
    if include_usage:
        chunks.append(_sse({**base, "choices": [], "usage": usage(reply), "emafusion": info}))
    chunks.append(b"data: [DONE]\n\n")
    return chunks


async def event_stream(chunks: list[bytes]) -> AsyncIterator[bytes]:
    """The whole stream in one write: the answer is complete before its first chunk (see
    the module's docstring), and one write per chunk would only add a wake-up of the
    client per chunk."""
    yield b"".join(chunks)
