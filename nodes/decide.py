"""decide + route_after_decide: gather a stage's verdicts, then ask the decision policy.

For each answer of the stage: its judges' confidence (the configured combiner; a failed
judge makes the policy distrust it, fail closed), the key equal answers share, its
model's reliability on this query's kind (the weight of its vote when answers are fused)
and the memory's kNN P(success) of its model on this very query (`memory_p`, a feature of
the fused confidence).
Earlier answers' agreement is re-scored; after a stage that failed, the plan is replanned
(and, with nothing planned left, the rest of the pool takes over). The policy's decision
and its whole input go into a `decided` event; the conditional edge reads the decision.
"""

from __future__ import annotations

import asyncio
from typing import Any

from langgraph.runtime import Runtime
from langgraph.types import Send

from emafusion.graph.context import Context
from emafusion.graph.state import (
    Attempt,
    Candidate,
    CascadeView,
    DecidedEvent,
    EscalatingEvent,
    RouterState,
)
from emafusion.nodes import policy, settings
from emafusion.nodes.events import emit
from emafusion.nodes.invoke_model import dispatch_stage
from emafusion.nodes.judges.agreement import agreement_with
from emafusion.nodes.planning import affordable, replan_after_failure
from emafusion.nodes.predict import memory_options
from emafusion.nodes.reliability import memory_success, reliabilities
from emafusion.nodes.resources import RouterResources
from emafusion.nodes.validate import allowed_models
from emafusion.stores.answers import answer_key, option_count, semantic_keys

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


async def _keys_for_free_form(
    attempts: list[Attempt], resources: RouterResources, threshold: float
) -> None:
    """Answers that commit to no short comparable answer are grouped by meaning."""
    open_answers = [a for a in attempts if a["status"] == "answered" and a["answer_key"] is None]
    if not any((a["answer"] or "").strip() for a in open_answers):
        return
    texts = [(a["answer"] or "").strip() for a in open_answers]
    vectors = await asyncio.to_thread(resources.embedder.embed, [t or " " for t in texts])
    keys = semantic_keys(
        [v.astype(float).tolist() if t else [] for v, t in zip(vectors, texts, strict=True)],
        [None] * len(open_answers),
        threshold,
    )
    for attempt, key, text in zip(open_answers, keys, texts, strict=True):
        if text and key is not None:
            # Anchor by the attempt index, so keys stay stable across stages.
            anchor = open_answers[int(key.split(":")[1])]["index"]
            attempt["answer_key"] = f"semantic:{anchor}"


def _judge_stage(
    attempts: list[Attempt],
    stage: list[Attempt],
    state: RouterState,
    context: Context,
    resources: RouterResources,
) -> None:
    verdicts = state.get("verdicts", [])
    fusion = resources.fusion or policy.DEFAULT_FUSION
    table = resources.reliability_table(fusion.smoothing)
    probs = state.get("category_probs", {})
    trust = reliabilities(table, [a["model"] for a in stage], probs)
    # Asked of the whole pool, as training asks it (the same numbers to the last bit).
    known = memory_success(
        resources.memory,
        state["query_vector"],
        resources.pool.names,
        context.k,
        state.get("category"),
    )
    n_options = option_count(state["query"])
    for attempt in stage:
        mine = [v for v in verdicts if v["attempt"] == attempt["index"]]
        attempt["judge_scores"] = {v["judge"]: v["score"] for v in mine}
        attempt["judge_cost_usd"] = sum(v["cost_usd"] for v in mine)
        if attempt["status"] != "answered":
            continue
        attempt["judges_failed"] = [v["judge"] for v in mine if v["failed"]]
        attempt["answer_key"] = answer_key(state["query"], attempt["answer"], n_options)
        attempt["reliability"] = trust[attempt["model"]]
        attempt["memory_p"] = known[attempt["model"]]
        if attempt["judges_failed"] and context.on_judge_failure == "escalate":
            attempt["confidence"] = FAILED_JUDGE_CONFIDENCE
        else:
            attempt["confidence"] = policy.combined_confidence(
                attempt["judge_scores"], context, resources.combiners
            )


def _replan(
    state: RouterState, attempts: list[Attempt], context: Context, resources: RouterResources
) -> list[Candidate]:
    """After a stage where no model answered: the plan's remaining stages, replanned
    (one-model stages), then the rest of the pool when nothing planned is left."""
    candidates = list(state.get("candidates", []))
    options = state.get("options", [])
    if context.stages is None:
        candidates = replan_after_failure(candidates, options, attempts, context)
    if len(candidates) > len(attempts) or any(a["status"] == "answered" for a in attempts):
        return candidates
    planned = {o["model"] for o in options} | {c["model"] for c in candidates}
    rest = [m for m in allowed_models(context, resources) if m not in planned]
    fallback, _ = memory_options(state, context, resources, rest, "fallback")
    if context.budget_usd is not None:
        left = context.budget_usd - sum(a["cost_usd"] + a["judge_cost_usd"] for a in attempts)
        fallback = affordable(fallback, left)
    return replan_after_failure(candidates, [], attempts, context, fallback)


async def decide(
    state: RouterState, runtime: Runtime[Context], resources: RouterResources
) -> dict[str, Any]:
    context = settings.current(state, runtime)
    attempts: list[Attempt] = [Attempt(**a) for a in state.get("attempts", [])]
    stage_no = attempts[-1]["stage"]
    stage = [a for a in attempts if a["stage"] == stage_no]
    _judge_stage(attempts, stage, state, context, resources)
    fusion = resources.fusion or policy.DEFAULT_FUSION
    if context.fusion == "vote":
        await _keys_for_free_form(attempts, resources, fusion.semantic_threshold)
    rescore_agreement(attempts, state["query"], context, resources)

    candidates = state.get("candidates", [])
    update: dict[str, Any] = {}
    if not any(a["status"] == "answered" for a in stage):
        candidates = _replan(state, attempts, context, resources)
        update["candidates"] = candidates
    upcoming = _stage_after(candidates, len(attempts))
    view = CascadeView(
        attempts=[policy.view_of(a) for a in attempts],
        next_models=[c["model"] for c in upcoming],
        next_cost_usd=sum(c["cost_bound_usd"] for c in upcoming) if upcoming else None,
        n_options=option_count(state["query"]),
    )
    rule = policy.PolicySettings.from_context(context)
    decision, reason = policy.decide(view, rule, fusion)
    for attempt in stage:
        attempt["decision"] = decision
    last = stage[-1]
    events = [
        emit(
            runtime,
            "decided",
            DecidedEvent(
                model=", ".join(a["model"] for a in stage),
                status=last["status"]
                if len(stage) == 1
                else ("answered" if any(a["status"] == "answered" for a in stage) else "failed"),
                confidence=policy.stage_confidence(view, rule, fusion),
                threshold=context.escalation_threshold,
                judge_costs=_judge_costs(state, stage),
                decision=decision,
                reason=reason,
                spent_usd=policy.spent_usd(view["attempts"]),
                view=view,
            ),
        )
    ]
    if decision == "escalate" and upcoming:
        to = ", ".join(c["model"] for c in upcoming)
        events.append(emit(runtime, "escalating", EscalatingEvent(to=to, reason=reason)))
    return {**update, "attempts": attempts, "trace": events}


def _judge_costs(state: RouterState, stage: list[Attempt]) -> dict[str, float]:
    indices = {a["index"] for a in stage}
    costs: dict[str, float] = {}
    for verdict in state.get("verdicts", []):
        if verdict["attempt"] in indices:
            costs[verdict["judge"]] = costs.get(verdict["judge"], 0.0) + verdict["cost_usd"]
    return costs


def _stage_after(candidates: list[Candidate], tried: int) -> list[Candidate]:
    if tried >= len(candidates):
        return []
    stage = candidates[tried]["stage"]
    return [c for c in candidates[tried:] if c["stage"] == stage]


def route_after_decide(state: RouterState) -> list[Send] | str:
    attempts = state.get("attempts", [])
    if attempts and attempts[-1]["decision"] == "escalate":
        return dispatch_stage(state)
    return "finalize"
