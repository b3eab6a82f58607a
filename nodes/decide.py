"""decide + route_after_decide: gather the judges' verdicts, then ask the decision policy.

The node turns verdicts into the attempt's confidence (the configured combiner; a failed
judge makes it 0, fail closed), re-scores agreement of earlier answers, replans after a
failed call, and records the policy's decision and its whole input in a `decided` event;
the conditional edge reads the decision.
"""

from __future__ import annotations

from typing import Any, Literal

from langgraph.runtime import Runtime

from emafusion.graph.context import Context
from emafusion.graph.state import (
    Attempt,
    CascadeView,
    DecidedEvent,
    EscalatingEvent,
    RouterState,
)
from emafusion.nodes import policy, settings
from emafusion.nodes.events import emit
from emafusion.nodes.judges.agreement import agreement_with
from emafusion.nodes.planning import affordable, replan_after_failure
from emafusion.nodes.predict import memory_options
from emafusion.nodes.resources import RouterResources
from emafusion.nodes.validate import allowed_models

# The confidence shown for an answer a judge failed on (the policy never returns on it).
FAILED_JUDGE_CONFIDENCE = 0.0


def rescore_agreement(
    attempts: list[Attempt], query: str, context: Context, resources: RouterResources
) -> None:
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
        if not attempt["judges_failed"] or context.on_judge_failure == "trust_others":
            attempt["confidence"] = policy.combined_confidence(
                attempt["judge_scores"], context, resources.combiners
            )


async def decide(
    state: RouterState, runtime: Runtime[Context], resources: RouterResources
) -> dict[str, Any]:
    context = settings.current(state, runtime)
    attempts: list[Attempt] = [Attempt(**a) for a in state.get("attempts", [])]
    index = len(attempts) - 1
    current = attempts[index]
    verdicts = [v for v in state.get("verdicts", []) if v["attempt"] == index]
    current["judge_scores"] = {v["judge"]: v["score"] for v in verdicts}
    current["judge_cost_usd"] = sum(v["cost_usd"] for v in verdicts)
    failed_judges = [v["judge"] for v in verdicts if v["failed"]]
    if current["status"] == "answered":
        current["judges_failed"] = failed_judges
        if failed_judges and context.on_judge_failure == "escalate":
            current["confidence"] = FAILED_JUDGE_CONFIDENCE
        else:
            current["confidence"] = policy.combined_confidence(
                current["judge_scores"], context, resources.combiners
            )
    rescore_agreement(attempts, state["query"], context, resources)

    candidates = state.get("candidates", [])
    update: dict[str, Any] = {}
    if current["status"] != "answered":
        options = state.get("options", [])
        candidates = replan_after_failure(candidates, options, attempts, context)
        if len(candidates) <= len(attempts):
            # Nothing planned is left: the rest of the pool takes over.
            planned = {o["model"] for o in options}
            rest = [m for m in allowed_models(context, resources) if m not in planned]
            fallback, _ = memory_options(state, context, resources, rest, "fallback")
            if context.budget_usd is not None:
                left = context.budget_usd - sum(
                    a["cost_usd"] + a["judge_cost_usd"] for a in attempts
                )
                fallback = affordable(fallback, left)
            candidates = replan_after_failure(candidates, options, attempts, context, fallback)
        update["candidates"] = candidates
    upcoming = candidates[len(attempts)] if len(candidates) > len(attempts) else None
    view = CascadeView(
        attempts=[policy.view_of(a) for a in attempts],
        next_model=upcoming["model"] if upcoming else None,
        next_cost_usd=upcoming["cost_bound_usd"] if upcoming else None,
    )
    decision, reason = policy.decide(view, policy.PolicySettings.from_context(context))
    current["decision"] = decision
    events = [
        emit(
            runtime,
            "decided",
            DecidedEvent(
                model=current["model"],
                status=current["status"],
                confidence=current["confidence"],
                threshold=context.escalation_threshold,
                judge_costs={v["judge"]: v["cost_usd"] for v in verdicts},
                decision=decision,
                reason=reason,
                spent_usd=policy.spent_usd(view["attempts"]),
                view=view,
            ),
        )
    ]
    if decision == "escalate" and upcoming is not None:
        events.append(
            emit(runtime, "escalating", EscalatingEvent(to=upcoming["model"], reason=reason))
        )
    return {**update, "attempts": attempts, "trace": events}


def route_after_decide(state: RouterState) -> Literal["invoke_model", "finalize"]:
    attempts = state.get("attempts", [])
    return "invoke_model" if attempts and attempts[-1]["decision"] == "escalate" else "finalize"
