"""Planning: per-model predictions -> the ordered models to try, and the replan after a
failure. Pure functions; the classify, predict and decide nodes call them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from emafusion.graph.context import Context
from emafusion.graph.state import Attempt, Candidate, CandidateSource
from emafusion.stores.cost import Usage, estimate_prompt_tokens, estimate_usage
from emafusion.stores.cost import cost_usd as usd_for
from emafusion.stores.metrics import upper_concave_hull
from emafusion.stores.pool import ModelSpec

# A model with no cost history is priced as if it answered with this many tokens.
ASSUMED_OUTPUT_TOKENS = 256


def list_price_estimate(spec: ModelSpec, query: str) -> float:
    """Expected USD of one call from list prices and estimated tokens."""
    return usd_for(spec.prices, estimate_usage(query, "x" * 4 * ASSUMED_OUTPUT_TOKENS))


def call_cost_bound(spec: ModelSpec, query: str, expected_usd: float) -> float:
    """What one call may cost before it is made, for the budget: the prompt's tokens are
    known, the output is bounded by the model's max_tokens (else the assumed length), and
    never less than such calls cost on average."""
    output = spec.max_tokens or ASSUMED_OUTPUT_TOKENS
    bound = usd_for(spec.prices, Usage(estimate_prompt_tokens(query), output, estimated=True))
    return max(expected_usd, bound)


def candidate(
    spec: ModelSpec,
    query: str,
    p_success: float,
    expected_usd: float,
    source: CandidateSource,
    stage: int = 0,
    exploration_bonus: float = 0.0,
) -> Candidate:
    return Candidate(
        model=spec.name,
        stage=stage,
        p_success=p_success,
        exploration_bonus=exploration_bonus,
        expected_cost_usd=expected_usd,
        cost_bound_usd=call_cost_bound(spec, query, expected_usd),
        source=source,
    )


def affordable(options: Iterable[Candidate], budget_usd: float | None) -> list[Candidate]:
    """The options whose call alone fits the budget (all of them without a budget)."""
    if budget_usd is None:
        return list(options)
    return [o for o in options if o["cost_bound_usd"] <= budget_usd]


def optimistic(c: Candidate) -> float:
    """What planning orders by: the prediction plus its exploration bonus, so a model with
    little history gets tried. Only planning reads the bonus; judges read `p_success`."""
    return c["p_success"] + c["exploration_bonus"]


def plan_cascade(
    options: Iterable[Candidate],
    max_levels: int,
    min_p_success: float = 0.0,
    cost_weight: float = 0.0,
    budget_usd: float | None = None,
) -> list[Candidate]:
    """The models to try, cheapest first.

    0. With a budget, only models whose one call fits it (`affordable`) are planned.
    1. Models below `min_p_success` are not credible (unless none is: then the best one).
    2. A model is kept only on the upper concave hull of (expected cost, p): never pay more
       for a predicted success a cheaper model already offers, nor for a marginal gain that
       a mix of a cheaper and a stronger model beats (a near-tie at ten times the price).
    3. The top of the cascade maximizes p - cost_weight * (USD per 1k queries); costlier
       models beyond it are not worth their price at this weight.
    4. Longer than `max_levels`: keep the strongest levels, i.e. the top and the models just
       below it. A weak first model is rarely trusted by the judges: its call is paid for
       and then escalated past.
    """
    pool = sorted(
        affordable(options, budget_usd),
        key=lambda c: (c["expected_cost_usd"], -optimistic(c), c["model"]),
    )
    if not pool:
        return []
    credible = [c for c in pool if optimistic(c) >= min_p_success]
    if not credible:
        credible = [max(pool, key=lambda c: optimistic(c))]
    frontier = upper_concave_hull(
        credible, lambda c: c["expected_cost_usd"], lambda c: optimistic(c)
    )
    utility = [optimistic(c) - cost_weight * 1000.0 * c["expected_cost_usd"] for c in frontier]
    top = max(range(len(frontier)), key=lambda i: (utility[i], -i))
    frontier = frontier[: top + 1]
    levels = max(1, max_levels)
    return staged(frontier[-levels:])


def staged(candidates: Sequence[Candidate], first: int = 0) -> list[Candidate]:
    """One model per stage, in order, from stage `first`."""
    return [Candidate(**{**c, "stage": first + i}) for i, c in enumerate(candidates)]


def fixed_plan(
    stages: Sequence[Sequence[str]],
    options: dict[str, Candidate],
    budget_usd: float | None = None,
    degraded: frozenset[str] = frozenset(),
) -> list[Candidate]:
    """A given plan (stages of model names) as candidates; models without an option (not in
    the pool, not allowed) or whose call alone exceeds the budget are left out, and stages
    left empty are dropped. `degraded` models (live evidence says they went worse) are
    left out too, unless nothing else of the plan is left."""
    if degraded:
        kept = fixed_plan(
            stages, {m: c for m, c in options.items() if m not in degraded}, budget_usd
        )
        if kept:
            return kept
    plan: list[Candidate] = []
    for models in stages:
        kept = affordable([options[m] for m in models if m in options], budget_usd)
        if kept:
            stage = len({c["stage"] for c in plan})
            plan += [Candidate(**{**c, "stage": stage}) for c in kept]
    return plan


def replan_after_failure(
    candidates: Sequence[Candidate],
    options: Sequence[Candidate],
    attempts: Sequence[Attempt],
    context: Context,
    fallback: Sequence[Candidate] = (),
) -> list[Candidate]:
    """Tried candidates, then a fresh cascade over what no attempt has used yet.

    A failed model is unavailable, not wrong: the models it dominated are credible again.
    When no planned option is left, the rest of the pool (`fallback`) takes over, its own
    best plan first and then every other model cheapest first, so a run ends without an
    answer only when every model failed or the budget forbids the next.
    """
    tried = {a["model"] for a in attempts}
    done = list(candidates[: len(attempts)])
    after = max((a["stage"] for a in attempts), default=-1) + 1
    answered = sum(1 for a in attempts if a["status"] == "answered")
    levels = max(1, context.max_levels - answered)
    untried = [o for o in options if o["model"] not in tried]
    tail = plan_cascade(
        untried, levels, context.min_p_success, context.cost_weight, context.budget_usd
    )
    if tail:
        return [*done, *staged(tail, after)]
    rest = [f for f in fallback if f["model"] not in tried]
    best = plan_cascade(rest, levels, context.min_p_success, context.cost_weight, None)
    planned = {c["model"] for c in best}
    others = sorted(
        (f for f in rest if f["model"] not in planned),
        key=lambda c: (c["expected_cost_usd"], -optimistic(c), c["model"]),
    )
    return [*done, *staged([*best, *others], after)]
