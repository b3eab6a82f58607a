"""invoke_model: call the next candidate; a failure escalates to the one after it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from langchain_core.messages import HumanMessage
from langgraph.errors import NodeError
from langgraph.runtime import Runtime
from langgraph.types import Command, RetryPolicy

from emafusion.graph.context import Context
from emafusion.graph.state import Attempt, Candidate, RouterState
from emafusion.nodes.cascade import plan_cascade
from emafusion.nodes.events import emit
from emafusion.nodes.resources import load_resources
from emafusion.stores.pool import RECORD_ID_KEY, ModelUnavailableError, call_cost

MODEL_TAG = "emafusion:model"


def _is_transient(error: Exception) -> bool:
    """Worth one more try: rate limits, 5xx and dropped connections; not timeouts or 4xx."""
    if isinstance(error, ModelUnavailableError | asyncio.TimeoutError | TimeoutError):
        return False
    status = getattr(error, "status_code", None)
    if isinstance(status, int):
        return status == 429 or status >= 500
    return type(error).__name__ in {"APIConnectionError", "ConnectError", "RemoteProtocolError"}


MODEL_RETRY = RetryPolicy(
    max_attempts=2, initial_interval=0.2, backoff_factor=2.0, jitter=True, retry_on=_is_transient
)


def next_candidate(state: RouterState) -> str | None:
    tried = len(state.get("attempts", []))
    candidates = state.get("candidates", [])
    return candidates[tried]["model"] if tried < len(candidates) else None


def _attempt(model: str, status: str, **fields: Any) -> Attempt:
    base: dict[str, Any] = {
        "model": model,
        "status": status,
        "answer": None,
        "error": None,
        "input_tokens": 0,
        "output_tokens": 0,
        "usage_estimated": False,
        "cost_usd": 0.0,
        "cost_source": "none",
        "latency_ms": 0.0,
        "judge_scores": {},
        "judge_cost_usd": 0.0,
        "confidence": None,
        "decision": None,
    }
    base.update(fields)
    return Attempt(**base)


async def invoke_model(state: RouterState, runtime: Runtime[Context]) -> dict[str, Any]:
    context = runtime.context or Context()
    resources = await asyncio.to_thread(load_resources, context)
    model = next_candidate(state)
    if model is None:
        raise RuntimeError("invoke_model reached with no candidate left")
    spec = resources.spec(model)
    events = [emit(runtime, "invoking", model=model, level=len(state.get("attempts", [])) + 1)]
    message = HumanMessage(state["query"])
    if state.get("record_id"):
        message.additional_kwargs[RECORD_ID_KEY] = state["record_id"]
    timeout = spec.timeout_s or context.model_timeout_s
    started = time.perf_counter()
    reply = await asyncio.wait_for(
        resources.chat_models[model].ainvoke(
            [message], config={"tags": [MODEL_TAG], "metadata": {"emafusion_model": model}}
        ),
        timeout=timeout,
    )
    latency_ms = (time.perf_counter() - started) * 1000.0
    cost, source = call_cost(spec, reply, state["query"])
    usage = reply.usage_metadata or {"input_tokens": 0, "output_tokens": 0}
    attempt = _attempt(
        model,
        "answered",
        answer=reply.text,
        input_tokens=int(usage["input_tokens"]),
        output_tokens=int(usage["output_tokens"]),
        usage_estimated=bool(reply.response_metadata.get("usage_estimated", False)),
        cost_usd=cost,
        cost_source=source,
        latency_ms=latency_ms,
    )
    return {
        "attempts": [*state.get("attempts", []), attempt],
        "trace": events,
        "excluded_ms": latency_ms,
    }


async def model_failed(
    state: RouterState, error: NodeError, runtime: Runtime[Context]
) -> Command[Any]:
    """Error handler of invoke_model: record the failure, then try the next candidate."""
    model = next_candidate(state) or "?"
    exc = error.error
    unavailable = isinstance(exc, ModelUnavailableError)
    kind = "timeout" if isinstance(exc, asyncio.TimeoutError | TimeoutError) else type(exc).__name__
    # Provider messages can be long and echo request details; keep the kind and a short text.
    text = f"{kind}: {str(exc)[:200]}" if str(exc) else kind
    attempt = _attempt(model, "unavailable" if unavailable else "failed", error=text)
    attempts = [*state.get("attempts", []), attempt]
    candidates = replan_after_failure(state, attempts, runtime.context or Context())
    event = emit(runtime, "failed", model=model, error=text, unavailable=unavailable)
    goto = "invoke_model" if len(candidates) > len(attempts) else "finalize"
    if goto == "invoke_model":
        event["data"]["next"] = candidates[len(attempts)]["model"]
    update = {"attempts": attempts, "candidates": candidates, "trace": [event]}
    return Command(update=update, goto=goto)


def replan_after_failure(
    state: RouterState, attempts: list[Attempt], context: Context
) -> list[Candidate]:
    """Tried candidates, then a fresh cascade over the options no attempt has used yet.

    A failed model is unavailable, not wrong: the models it dominated are credible again,
    so the run never ends without an answer while an untried option remains.
    """
    tried = {a["model"] for a in attempts}
    done = state.get("candidates", [])[: len(attempts)]
    untried = [o for o in state.get("options", []) if o["model"] not in tried]
    answered = sum(1 for a in attempts if a["status"] == "answered")
    levels = max(1, context.max_levels - answered)
    tail = plan_cascade(untried, levels, context.min_p_success, context.cost_weight)
    return [*done, *tail]
