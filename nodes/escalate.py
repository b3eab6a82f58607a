"""decide + route_after_decide: return the answer, or escalate to the next model.

The node records the decision (confidence, reason) on the attempt; the conditional edge
reads it. Return when the weighted judge confidence clears the threshold, when the next
candidate would break the budget, or at the last level.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from langgraph.runtime import Runtime

from emafusion.graph.context import Context
from emafusion.graph.state import JudgeVerdict, RouterState
from emafusion.nodes.events import emit


def combine(verdicts: Sequence[JudgeVerdict], weights: Mapping[str, float]) -> float | None:
    """Weighted mean of the judges that did not abstain (None: no judge spoke)."""
    total = weight_sum = 0.0
    for verdict in verdicts:
        score = verdict["score"]
        weight = weights.get(verdict["judge"], 1.0)
        if score is None or weight <= 0:
            continue
        total += weight * score
        weight_sum += weight
    return total / weight_sum if weight_sum > 0 else None


async def decide(state: RouterState, runtime: Runtime[Context]) -> dict[str, Any]:
    context = runtime.context or Context()
    attempts = [dict(a) for a in state.get("attempts", [])]
    index = len(attempts) - 1
    current = attempts[index]
    verdicts = [v for v in state.get("verdicts", []) if v["attempt"] == index]
    current["judge_scores"] = {v["judge"]: v["score"] for v in verdicts}
    current["judge_cost_usd"] = sum(v["cost_usd"] for v in verdicts)
    if current["status"] == "answered":
        current["confidence"] = combine(verdicts, context.judge_weights)
    candidates = state.get("candidates", [])
    remaining = candidates[index + 1 :]
    spent = sum(a["cost_usd"] + a["judge_cost_usd"] for a in attempts)
    confidence = current["confidence"]
    if current["status"] == "answered" and (
        confidence is None or confidence >= context.escalation_threshold
    ):
        decision = "return"
    elif not remaining:
        decision = "exhausted"
    elif sum(1 for a in attempts if a["status"] == "answered") >= context.max_levels:
        decision = "max_levels"
    elif (
        context.budget_usd is not None
        and spent + remaining[0]["expected_cost_usd"] > context.budget_usd
    ):
        decision = "budget"
    else:
        decision = "escalate"
    current["decision"] = decision
    attempts[index] = current
    data: dict[str, Any] = {
        "model": current["model"],
        "confidence": confidence,
        "threshold": context.escalation_threshold,
        "judges": current["judge_scores"],
        "decision": decision,
        "spent_usd": spent,
    }
    events = [emit(runtime, "judged", **data)]
    if decision == "escalate":
        events.append(emit(runtime, "escalating", to=remaining[0]["model"], reason="confidence"))
    return {"attempts": attempts, "trace": events}


def route_after_decide(state: RouterState) -> Literal["invoke_model", "finalize"]:
    attempts = state.get("attempts", [])
    return "invoke_model" if attempts and attempts[-1]["decision"] == "escalate" else "finalize"
