"""finalize: the answer the policy chooses, and what the query cost."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from emafusion.graph.context import Context
from emafusion.graph.state import ReturnedEvent, RouterState
from emafusion.nodes import policy, settings
from emafusion.nodes.events import emit


async def finalize(state: RouterState, runtime: Runtime[Context]) -> dict[str, Any]:
    attempts = state.get("attempts", [])
    views = [policy.view_of(a) for a in attempts]
    decision = attempts[-1]["decision"] if attempts else None
    index, reason = policy.choose(views, decision or "exhausted")
    if not attempts:
        budget = settings.current(state, runtime).budget_usd
        reason = (
            f"budget: no model's call fits ${budget:.6f} (pre-call bound)"
            if budget is not None
            else "no model could be planned"
        )
    chosen = attempts[index] if index is not None else None
    cost = policy.spent_usd(views)
    path = [a["model"] for a in attempts]
    event = emit(
        runtime,
        "returned",
        ReturnedEvent(
            run_id=state.get("run_id", ""),
            model=chosen["model"] if chosen else None,
            confidence=chosen["confidence"] if chosen else None,
            cost_usd=cost,
            escalation_path=path,
            answered=chosen is not None,
            cost_sources=sorted({a["cost_source"] for a in attempts if a["status"] == "answered"}),
            reason=reason,
        ),
    )
    return {
        "run_id": state.get("run_id", ""),
        "answer": chosen["answer"] if chosen else None,
        "model": chosen["model"] if chosen else None,
        "confidence": chosen["confidence"] if chosen else None,
        "cost_usd": cost,
        "escalation_path": path,
        "overhead_ms": state.get("router_ms", 0.0),
        "trace": [event],
    }
