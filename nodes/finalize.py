"""finalize: choose the answer to return and total up what the query cost."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from emafusion.graph.context import Context
from emafusion.graph.state import Attempt, RouterState
from emafusion.nodes.events import emit


def chosen_attempt(attempts: list[Attempt]) -> Attempt | None:
    """The attempt that cleared the threshold; else the most confident answer; else none."""
    answered = [a for a in attempts if a["status"] == "answered"]
    for attempt in answered:
        if attempt["decision"] == "return":
            return attempt
    if not answered:
        return None
    # Later (stronger) models win ties: they were escalated to for a reason.
    return max(reversed(answered), key=lambda a: a["confidence"] or 0.0)


async def finalize(state: RouterState, runtime: Runtime[Context]) -> dict[str, Any]:
    attempts = state.get("attempts", [])
    chosen = chosen_attempt(attempts)
    cost = sum(a["cost_usd"] + a["judge_cost_usd"] for a in attempts)
    path = [a["model"] for a in attempts]
    event = emit(
        runtime,
        "returned",
        model=chosen["model"] if chosen else None,
        confidence=chosen["confidence"] if chosen else None,
        cost_usd=cost,
        escalation_path=path,
        answered=chosen is not None,
        cost_sources=sorted({a["cost_source"] for a in attempts if a["status"] == "answered"}),
    )
    return {
        "answer": chosen["answer"] if chosen else None,
        "model": chosen["model"] if chosen else None,
        "confidence": chosen["confidence"] if chosen else None,
        "cost_usd": cost,
        "escalation_path": path,
        "overhead_ms": state.get("router_ms", 0.0),
        "trace": [event],
    }
