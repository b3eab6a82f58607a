"""finalize: the answer the policy chooses, and what the query cost."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from emafusion.graph.context import Context
from emafusion.graph.state import AnswerBelief, CascadeView, ReturnedEvent, RouterState
from emafusion.nodes import policy, settings
from emafusion.nodes.events import emit
from emafusion.nodes.resources import RouterResources
from emafusion.stores.answers import option_count


async def finalize(
    state: RouterState, runtime: Runtime[Context], resources: RouterResources
) -> dict[str, Any]:
    context = settings.current(state, runtime)
    attempts = state.get("attempts", [])
    view = CascadeView(
        attempts=[policy.view_of(a) for a in attempts],
        next_models=[],
        next_cost_usd=None,
        n_options=option_count(state["query"]),
    )
    rule = policy.PolicySettings.from_context(context)
    fusion = resources.fusion or policy.DEFAULT_FUSION
    decision = attempts[-1]["decision"] if attempts else None
    index, reason = policy.choose(view, decision or "exhausted", rule, fusion)
    if not attempts:
        budget = context.budget_usd
        reason = (
            f"budget: no model's call fits ${budget:.6f} (pre-call bound: list prices x the "
            f"query's tokens and the model's max_tokens); raise the budget to call one"
            if budget is not None
            else "no model could be planned"
        )
    chosen = attempts[index] if index is not None else None
    if chosen is None:
        confidence = None
    elif context.fusion == "vote":
        confidence = policy.stage_confidence(view, rule, fusion)
    else:
        confidence = chosen["confidence"]
    cost = policy.spent_usd(view["attempts"])
    beliefs = policy.answer_beliefs(view, rule, fusion)
    believed = [
        AnswerBelief(model=a["model"], belief=b, memory_p=a.get("memory_p"))
        for a, b in zip(attempts, beliefs, strict=True)
        if a["status"] == "answered" and b is not None and not a["judges_failed"]
    ]
    path = [a["model"] for a in attempts]
    event = emit(
        runtime,
        "returned",
        ReturnedEvent(
            run_id=state.get("run_id", ""),
            model=chosen["model"] if chosen else None,
            confidence=confidence,
            cost_usd=cost,
            escalation_path=path,
            answered=chosen is not None,
            cost_sources=sorted({a["cost_source"] for a in attempts if a["status"] == "answered"}),
            reason=reason,
            beliefs=believed,
        ),
    )
    return {
        "run_id": state.get("run_id", ""),
        "answer": chosen["answer"] if chosen else None,
        "model": chosen["model"] if chosen else None,
        "confidence": confidence,
        "cost_usd": cost,
        "escalation_path": path,
        "answer_beliefs": beliefs,
        "overhead_ms": state.get("router_ms", 0.0),
        "trace": [event],
    }
