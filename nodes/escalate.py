"""decide + route_after_decide: return the answer, or escalate to the next model.

The node records the decision (confidence, reason) on the attempt; the conditional edge
reads it. Return when the weighted judge confidence clears the threshold, when the next
candidate would break the budget, or at the last level.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from langgraph.runtime import Runtime

from emafusion.graph.context import Context
from emafusion.graph.state import JudgeVerdict, RouterState
from emafusion.nodes.events import emit
from emafusion.nodes.judges.agreement import agreement_with
from emafusion.nodes.resources import load_resources
from emafusion.stores.combiner import CombinerError


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


async def confidence_of(verdicts: Sequence[JudgeVerdict], context: Context) -> float | None:
    """The combined confidence `Context.combiner` asks for (static mean or learned)."""
    return await confidence_from_scores({v["judge"]: v["score"] for v in verdicts}, context)


async def confidence_from_scores(
    scores: Mapping[str, float | None], context: Context
) -> float | None:
    if context.combiner == "static":
        verdicts = [
            JudgeVerdict(judge=j, attempt=0, score=s, cost_usd=0.0, detail="", latency_ms=0.0)
            for j, s in scores.items()
        ]
        return combine(verdicts, context.judge_weights)
    if context.combiner != "learned":
        raise ValueError(
            f"Context.combiner must be 'static' or 'learned', got {context.combiner!r}"
        )
    resources = await asyncio.to_thread(load_resources, context)
    if resources.combiners is None:
        raise CombinerError(
            "Context.combiner='learned' but the router directory has no fitted combiner. Fix: "
            "run `emafusion judges train --dataset NAME` or use combiner='static'."
        )
    # The learned combiner of exactly the configured judges: a judge that is left out was
    # refitted without, not given a zero weight.
    combiner = resources.combiners.get(context.judges)
    return combiner.combine(dict(scores))


async def rescore_agreement(attempts: list[dict[str, Any]], query: str, context: Context) -> None:
    """Agreement is mutual: when a later answer disagrees with an earlier one, the earlier
    one loses the agreement it was credited with too. Without this, a stronger model that
    contradicts a weaker one would lose the fallback to the answer it contradicted.
    """
    answered = [a for a in attempts if a["status"] == "answered"]
    if "agreement" not in context.judges or len(answered) < 2:
        return
    for attempt in answered[:-1]:
        others = [o["answer"] or "" for o in answered if o is not attempt]
        result = agreement_with(attempt["answer"] or "", others, query)
        attempt["judge_scores"] = {**attempt["judge_scores"], "agreement": result.score}
        attempt["confidence"] = await confidence_from_scores(attempt["judge_scores"], context)


async def decide(state: RouterState, runtime: Runtime[Context]) -> dict[str, Any]:
    context = runtime.context or Context()
    attempts = [dict(a) for a in state.get("attempts", [])]
    index = len(attempts) - 1
    current = attempts[index]
    verdicts = [v for v in state.get("verdicts", []) if v["attempt"] == index]
    current["judge_scores"] = {v["judge"]: v["score"] for v in verdicts}
    current["judge_cost_usd"] = sum(v["cost_usd"] for v in verdicts)
    if current["status"] == "answered":
        current["confidence"] = await confidence_of(verdicts, context)
    await rescore_agreement(attempts, state["query"], context)
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
        # The next answer will be judged too, at about what judging this one cost.
        and spent + remaining[0]["expected_cost_usd"] + current["judge_cost_usd"]
        > context.budget_usd
    ):
        decision = "budget"
    else:
        decision = "escalate"
    current["decision"] = decision
    attempts[index] = current
    data: dict[str, Any] = {
        "model": current["model"],
        "status": current["status"],
        "confidence": confidence,
        "threshold": context.escalation_threshold,
        "judges": current["judge_scores"],
        "judge_costs": {v["judge"]: v["cost_usd"] for v in verdicts},
        "model_cost_usd": current["cost_usd"],
        "decision": decision,
        "spent_usd": spent,
        # Every attempt's confidence and judge scores as they stand now (agreement re-scored).
        "confidences": [a["confidence"] for a in attempts],
        "scores_now": [a["judge_scores"] for a in attempts],
    }
    events = [emit(runtime, "judged", **data)]
    if decision == "escalate":
        events.append(emit(runtime, "escalating", to=remaining[0]["model"], reason="confidence"))
    return {"attempts": attempts, "trace": events}


def route_after_decide(state: RouterState) -> Literal["invoke_model", "finalize"]:
    attempts = state.get("attempts", [])
    return "invoke_model" if attempts and attempts[-1]["decision"] == "escalate" else "finalize"
