"""Exploration: a model the memory knows too little about gets tried, at a bounded cost.

A model added to the pool has no outcomes, so every prediction of it is a prior and the
planner, which trusts proven models, would never call it. On a seeded share of queries
(`Context.exploration_rate`) a model with fewer than `Context.exploration_outcomes`
counted outcomes (ground truth, plus judged ones at the memory's judged weight) is
*explored*: it is called first, alone, and its answer is judged and returned unless the
decision policy escalates past it (the plan follows it); that answer's outcome (feedback,
judges) is what the memory learns it from. Among several unproven models, Thompson
sampling picks one: a draw from each model's Beta posterior over its counted outcomes, the
highest wins.

The cost is explicit and bounded: only on `exploration_rate` of queries, only a call whose
pre-call bound fits `exploration_budget_usd` (and the run's budget), and only until the
model has `exploration_outcomes` counted outcomes; then it competes on its predictions.
The draw orders planning only: judges read `p_success`, the memory's prediction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from emafusion.graph.context import Context
from emafusion.graph.state import Candidate
from emafusion.nodes.resources import RouterResources
from emafusion.nodes.validate import allowed_models
from emafusion.stores.memory import ModelStats


@dataclass(frozen=True)
class Evidence:
    """What the memory holds of a model: counted outcomes and how many were successes."""

    counted: float
    successes: float

    @classmethod
    def of(cls, stats: ModelStats | None) -> Evidence:
        if stats is None:
            return cls(0.0, 0.0)
        return cls(stats.count_weighted, stats.mean_score * stats.count_weighted)


def seeded_unit(*parts: object) -> float:
    """A number in [0, 1) fixed by its parts, so a replay explores the same queries."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def unproven(
    models: Sequence[str], stats: dict[str, ModelStats], context: Context
) -> dict[str, Evidence]:
    """The models with fewer counted outcomes than `exploration_outcomes`."""
    evidence = {m: Evidence.of(stats.get(m)) for m in models}
    return {m: e for m, e in evidence.items() if e.counted < context.exploration_outcomes}


def in_explored_share(query: str, context: Context) -> bool:
    """Whether this query is one of the seeded `exploration_rate` share that may explore."""
    return seeded_unit("explore", query) < context.exploration_rate


def pick(query: str, candidates: dict[str, Evidence]) -> str | None:
    """Thompson sampling among the unproven models: the highest draw from each one's Beta
    posterior over its counted outcomes. Seeded by the query and the model's evidence, so a
    replay of the same stream draws the same, and a query draws anew as evidence arrives."""
    if not candidates:
        return None
    draws = {}
    for model, e in sorted(candidates.items()):
        seed = int(seeded_unit("thompson", query, model, e.counted) * 2**63)
        rng = np.random.default_rng(seed)
        draws[model] = float(rng.beta(1.0 + e.successes, 1.0 + max(0.0, e.counted - e.successes)))
    return max(draws, key=lambda m: (draws[m], m))


def explore_plan(
    plan: Sequence[Candidate],
    option: Candidate,
    context: Context,
) -> list[Candidate]:
    """The plan with `option` as its first stage, alone, so its answer is judged (and
    returned, unless the decision policy escalates past it); the planned stages follow,
    together as planned, within `max_levels` stages in all."""
    stages: list[list[Candidate]] = []
    for c in plan:
        if c["model"] == option["model"]:
            continue
        if stages and stages[-1][0]["stage"] == c["stage"]:
            stages[-1].append(c)
        else:
            stages.append([c])
    keep = stages[: max(0, context.max_levels - 1)]
    first = Candidate(**{**option, "stage": 0, "source": "exploration"})
    return [first, *(Candidate(**{**c, "stage": i + 1}) for i, s in enumerate(keep) for c in s)]


def affordable_for_exploration(option: Candidate, context: Context) -> bool:
    for budget in (context.exploration_budget_usd, context.budget_usd):
        if budget is not None and option["cost_bound_usd"] > budget:
            return False
    return True


def explore(
    resources: RouterResources,
    context: Context,
    query: str,
    plan: Sequence[Candidate],
    options: Sequence[Candidate],
    make_options: Callable[[list[str]], dict[str, Candidate]],
) -> tuple[list[Candidate], list[Candidate], str | None]:
    """(plan, options, explored model or None). The plan and options unchanged, or, when
    this query is in the explored share and an unproven allowed model's call fits the
    budgets, that model on top of the plan (and among the options, for failover)."""
    if context.exploration_rate <= 0 or not in_explored_share(query, context):
        return list(plan), list(options), None
    stats = resources.model_stats(None)
    evidence = unproven(allowed_models(context, resources), stats, context)
    if not evidence:
        return list(plan), list(options), None
    known = {o["model"]: o for o in options}
    added = make_options([m for m in evidence if m not in known])
    known.update(added)
    fits = {m: e for m, e in evidence.items() if affordable_for_exploration(known[m], context)}
    chosen = pick(query, fits)
    if chosen is None:
        return list(plan), list(options), None
    return explore_plan(plan, known[chosen], context), [*options, *added.values()], chosen
