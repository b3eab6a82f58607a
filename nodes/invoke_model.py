"""invoke_model: call the next planned model; a failure is recorded, and decide moves on.

Failures never raise out of the node: a model that errors, times out or returns an
incomplete answer becomes a failed attempt (its error redacted), and the decision policy
escalates to the next model, so one provider's fault never costs the answer.
"""

from __future__ import annotations

import time
from typing import Any

from langchain_core.messages import HumanMessage
from langgraph.runtime import Runtime

from emafusion.graph.context import Context
from emafusion.graph.state import (
    Attempt,
    AttemptStatus,
    FailedEvent,
    InvokingEvent,
    RouterState,
)
from emafusion.nodes import settings
from emafusion.nodes.events import emit
from emafusion.nodes.model_calls import CallFailure, call_model
from emafusion.nodes.resources import RouterResources
from emafusion.stores.providers import RECORD_ID_KEY, call_cost

MODEL_TAG = "emafusion:model"


def next_candidate(state: RouterState) -> str | None:
    tried = len(state.get("attempts", []))
    candidates = state.get("candidates", [])
    return candidates[tried]["model"] if tried < len(candidates) else None


def new_attempt(model: str, status: AttemptStatus, **fields: Any) -> Attempt:
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
        "judges_failed": [],
        "confidence": None,
        "decision": None,
    }
    base.update(fields)
    return Attempt(**base)


async def invoke_model(
    state: RouterState, runtime: Runtime[Context], resources: RouterResources
) -> dict[str, Any]:
    context = settings.current(state, runtime)
    model = next_candidate(state)
    if model is None:
        raise RuntimeError("invoke_model reached with no candidate left")
    spec = resources.spec(model)
    level = len(state.get("attempts", [])) + 1
    events = [emit(runtime, "invoking", InvokingEvent(model=model, level=level))]
    message = HumanMessage(state["query"])
    if state.get("record_id"):
        message.additional_kwargs[RECORD_ID_KEY] = state["record_id"]
    started = time.perf_counter()
    try:
        reply = await call_model(
            resources.chat_models[model],
            [message],
            timeout_s=spec.timeout_s or context.model_timeout_s,
            config={"tags": [MODEL_TAG], "metadata": {"emafusion_model": model}},
            replayed=spec.provider == "replay",
        )
    except CallFailure as failure:
        latency_ms = (time.perf_counter() - started) * 1000.0
        status: AttemptStatus = "unavailable" if failure.unavailable else "failed"
        attempt = new_attempt(model, status, error=failure.describe(), latency_ms=latency_ms)
        events.append(
            emit(
                runtime,
                "failed",
                FailedEvent(model=model, error=failure.describe(), unavailable=failure.unavailable),
            )
        )
        return {
            "attempts": [*state.get("attempts", []), attempt],
            "trace": events,
            "excluded_ms": latency_ms,
        }
    latency_ms = (time.perf_counter() - started) * 1000.0
    cost, source = call_cost(spec, reply, state["query"])
    usage = reply.usage_metadata or {"input_tokens": 0, "output_tokens": 0}
    attempt = new_attempt(
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
