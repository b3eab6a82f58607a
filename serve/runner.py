"""One routed answer: run the graph on a query and read what a reply needs from its state.

Shared by the HTTP server and `ChatEmaFusion`. The run's final state (LangGraph's
`values` stream) holds the attempts, so the reply's usage sums every model call's tokens
as the providers (or the recordings) reported them; judges report costs, not tokens, so
a reply whose judges cost anything says its usage is partly estimated.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph

from emafusion.graph.context import Context
from emafusion.stores.cost import COST_RECORDED

_CHUNK = re.compile(r"\S+\s*|\s+")
WORDS_PER_CHUNK = 4


@dataclass(frozen=True)
class ModelCall:
    model: str
    status: str  # answered | failed | unavailable
    confidence: float | None
    cost_usd: float
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class RoutedReply:
    run_id: str
    preset: str
    answer: str | None
    model: str | None
    confidence: float | None
    cost_usd: float
    cost_estimated: bool
    judge_cost_usd: float
    prompt_tokens: int
    completion_tokens: int
    usage_estimated: bool
    escalation_path: list[str]
    calls: list[ModelCall]
    failures: list[dict[str, str]]
    overhead_ms: float
    reason: str
    sticky: dict[str, Any] | None = field(default=None)

    @property
    def answered(self) -> bool:
        return self.model is not None and self.answer is not None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def info(self) -> dict[str, Any]:
        """The routing decision and its cost: a reply's `emafusion` object."""
        return {
            "run_id": self.run_id,
            "preset": self.preset,
            "model": self.model,
            "confidence": self.confidence,
            "escalation_path": self.escalation_path,
            "confidences": {c.model: c.confidence for c in self.calls},
            "calls": [
                {
                    "model": c.model,
                    "status": c.status,
                    "confidence": c.confidence,
                    "cost_usd": c.cost_usd,
                }
                for c in self.calls
            ],
            "cost_usd": self.cost_usd,
            "cost_estimated": self.cost_estimated,
            "judge_cost_usd": self.judge_cost_usd,
            "usage_estimated": self.usage_estimated,
            "overhead_ms": round(self.overhead_ms, 3),
            "reason": self.reason,
            "sticky": self.sticky,
        }

    def chunks(self, words: int = WORDS_PER_CHUNK) -> list[str]:
        """The answer in pieces of a few words, for a stream."""
        pieces = _CHUNK.findall(self.answer or "")
        return ["".join(pieces[i : i + words]) for i in range(0, len(pieces), words)] or [""]


def reply_from_state(state: Mapping[str, Any], preset: str) -> RoutedReply:
    attempts = list(state.get("attempts", []))
    verdicts = list(state.get("verdicts", []))
    trace = list(state.get("trace", []))
    returned: dict[str, Any] = next(
        (e["data"] for e in reversed(trace) if e["event"] == "returned"), {}
    )
    failures = [
        {"model": e["data"]["model"], "error": e["data"]["error"]}
        for e in trace
        if e["event"] == "failed"
    ]
    answered = [a for a in attempts if a["status"] == "answered"]
    judge_cost = float(sum(v.get("cost_usd", 0.0) for v in verdicts))
    sources = returned.get("cost_sources", [])
    return RoutedReply(
        run_id=str(state.get("run_id") or returned.get("run_id") or ""),
        preset=preset,
        answer=state.get("answer"),
        model=state.get("model"),
        confidence=state.get("confidence"),
        cost_usd=float(state.get("cost_usd", 0.0)),
        cost_estimated=any(s != COST_RECORDED for s in sources),
        judge_cost_usd=judge_cost,
        prompt_tokens=sum(int(a["input_tokens"]) for a in answered),
        completion_tokens=sum(int(a["output_tokens"]) for a in answered),
        usage_estimated=any(a["usage_estimated"] for a in answered) or judge_cost > 0.0,
        escalation_path=list(state.get("escalation_path", [])),
        calls=[
            ModelCall(
                model=a["model"],
                status=a["status"],
                confidence=a["confidence"],
                cost_usd=float(a["cost_usd"]),
                input_tokens=int(a["input_tokens"]),
                output_tokens=int(a["output_tokens"]),
            )
            for a in attempts
        ],
        failures=failures,
        overhead_ms=float(state.get("overhead_ms", 0.0)),
        reason=str(returned.get("reason", "")),
    )


async def route(
    graph: CompiledStateGraph,
    query: str,
    context: Context,
    config: RunnableConfig | None = None,
) -> RoutedReply:
    """Route `query` under `context`; a run's bad settings raise `ContextError`.

    The run is a root run of its own (an empty `contextvars` context): inside someone
    else's LangGraph run (ChatEmaFusion in an agent) it would otherwise be taken for a
    subgraph, and every model call it makes, judged or not, would reach that run's
    message stream.
    """

    async def run() -> Mapping[str, Any]:
        final: Mapping[str, Any] = {}
        async for state in graph.astream(
            {"query": query, "record_id": None},
            config=config,
            context=context,
            stream_mode="values",
        ):
            final = state
        return final

    final = await asyncio.create_task(run(), context=contextvars.Context())
    return reply_from_state(final, context.preset)
