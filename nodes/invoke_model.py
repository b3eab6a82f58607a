"""invoke_model: call one planned model (a stage's models are Sent here at once); a failure
is recorded, and decide moves on.

Failures never raise out of the node: a model that errors, times out or returns an
incomplete answer becomes a failed attempt (its error redacted), and the decision policy
escalates to the next model, so one provider's fault never costs the answer.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from langchain_core.messages import HumanMessage
from langgraph.runtime import Runtime
from langgraph.types import Send
from typing_extensions import TypedDict

from emafusion.graph.context import Context
from emafusion.graph.state import (
    Attempt,
    AttemptStatus,
    CallTask,
    Candidate,
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


class InvokeInput(TypedDict):
    call: CallTask
    settings: dict[str, Any]


def next_stage(state: RouterState) -> list[Candidate]:
    """The planned models of the next stage (none left: empty)."""
    tried = len(state.get("attempts", []))
    candidates = state.get("candidates", [])
    if tried >= len(candidates):
        return []
    stage = candidates[tried]["stage"]
    return [c for c in candidates[tried:] if c["stage"] == stage]


def dispatch_stage(state: RouterState) -> list[Send] | Literal["finalize"]:
    """One Send per model of the next stage: its calls run at once."""
    stage = next_stage(state)
    if not stage:
        return "finalize"
    first = len(state.get("attempts", []))
    return [
        Send(
            "invoke_model",
            InvokeInput(
                call=CallTask(
                    model=c["model"],
                    index=first + i,
                    stage=c["stage"],
                    query=state["query"],
                    record_id=state.get("record_id"),
                ),
                settings=state.get("settings", {}),
            ),
        )
        for i, c in enumerate(stage)
    ]


def new_attempt(
    model: str, status: AttemptStatus, index: int = 0, stage: int = 0, **fields: Any
) -> Attempt:
    base: dict[str, Any] = {
        "index": index,
        "stage": stage,
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
        "answer_key": None,
        "reliability": None,
        "memory_p": None,
        "confidence": None,
        "decision": None,
    }
    base.update(fields)
    return Attempt(**base)


async def invoke_model(
    state: InvokeInput, runtime: Runtime[Context], resources: RouterResources
) -> dict[str, Any]:
    context = settings.current(state, runtime)
    call = state["call"]
    model, index, stage = call["model"], call["index"], call["stage"]
    spec = resources.spec(model)
    events = [emit(runtime, "invoking", InvokingEvent(model=model, level=index + 1))]
    message = HumanMessage(call["query"])
    if call["record_id"]:
        message.additional_kwargs[RECORD_ID_KEY] = call["record_id"]
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
        attempt = new_attempt(
            model, status, index, stage, error=failure.describe(), latency_ms=latency_ms
        )
        events.append(
            emit(
                runtime,
                "failed",
                FailedEvent(model=model, error=failure.describe(), unavailable=failure.unavailable),
            )
        )
        return {"attempts": [attempt], "trace": events, "excluded_ms": latency_ms}
    latency_ms = (time.perf_counter() - started) * 1000.0
    cost, source = call_cost(spec, reply, call["query"])
    usage = reply.usage_metadata or {"input_tokens": 0, "output_tokens": 0}
    attempt = new_attempt(
        model,
        "answered",
        index,
        stage,
        answer=reply.text,
        input_tokens=int(usage["input_tokens"]),
        output_tokens=int(usage["output_tokens"]),
        usage_estimated=bool(reply.response_metadata.get("usage_estimated", False)),
        cost_usd=cost,
        cost_source=source,
        latency_ms=latency_ms,
    )
    return {"attempts": [attempt], "trace": events, "excluded_ms": latency_ms}
