"""predict: the learned router over the outcome memory.

Asked when the taxonomy is unsure (all pool models are candidates), or to re-rank a
confident taxonomy's suitable models by how similar past queries went (hybrid).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from langgraph.runtime import Runtime

from emafusion.graph.context import Context
from emafusion.graph.state import (
    Candidate,
    CandidateSource,
    PredictedEvent,
    PredictionSummary,
    RouteMode,
    RouterState,
)
from emafusion.nodes import settings
from emafusion.nodes.classify import category_accuracy
from emafusion.nodes.events import emit
from emafusion.nodes.exploration import explore
from emafusion.nodes.planning import (
    affordable,
    candidate,
    list_price_estimate,
    plan_cascade,
    staged,
)
from emafusion.nodes.resources import RouterResources
from emafusion.nodes.validate import allowed_models
from emafusion.stores.memory import Prediction


def memory_options(
    state: RouterState,
    context: Context,
    resources: RouterResources,
    models: Sequence[str],
    source: CandidateSource | None = None,
) -> tuple[list[Candidate], dict[str, Prediction]]:
    """Each model as a candidate, as the memory predicts it does on this query."""
    vector = np.asarray(state["query_vector"], dtype=np.float32)
    predictions = resources.memory.predict(
        vector, list(models), k=context.k, category=state.get("category")
    )
    options = []
    for model in models:
        prediction = predictions[model]
        # What live feedback says the memory gets wrong about this model lately (drift).
        p_success = min(1.0, max(0.0, prediction.p_success + resources.drift.offset(model)))
        spec = resources.spec(model)
        cost = prediction.expected_cost_usd
        if cost is None:
            cost = list_price_estimate(spec, state["query"])
        options.append(
            candidate(
                spec,
                state["query"],
                p_success,
                cost,
                source or ("memory" if prediction.n_eff > 0 else "prior"),
                # Untried models get their exploration bonus in planning, so they are tried;
                # the judges read the prediction alone.
                exploration_bonus=(prediction.ucb - prediction.p_success)
                if prediction.n_eff < 1.0
                else 0.0,
            )
        )
    return options, predictions


def strongest_plan(
    resources: RouterResources,
    context: Context,
    options: list[Candidate],
    more_options: Callable[[list[str]], dict[str, Candidate]],
) -> tuple[list[Candidate], list[Candidate]] | None:
    """(plan, options): the allowed model most accurate over all categories, alone (the
    conservative route of a novel query); None when no such model's call fits the budget."""
    accuracy = category_accuracy(resources, None)
    ranked = sorted(
        (m for m in allowed_models(context, resources) if m in accuracy),
        key=lambda m: (-accuracy[m], m),
    )
    known = {o["model"]: o for o in options}
    for model in ranked:
        added = {} if model in known else more_options([model])
        option = known.get(model) or added[model]
        if affordable([option], context.budget_usd):
            return staged([option]), [*options, *added.values()]
    return None


async def predict(
    state: RouterState, runtime: Runtime[Context], resources: RouterResources
) -> dict[str, Any]:
    context = settings.current(state, runtime)
    refine = state.get("route_mode") == "taxonomy"
    models = (
        [c["model"] for c in state.get("candidates", [])]
        if refine
        else allowed_models(context, resources)
    )
    options, predictions = memory_options(state, context, resources, models)
    candidates = plan_cascade(
        options, context.max_levels, context.min_p_success, context.cost_weight, context.budget_usd
    )

    def more_options(names: list[str]) -> dict[str, Candidate]:
        more, _ = memory_options(state, context, resources, names)
        return {c["model"]: c for c in more}

    top_similarity = max(
        (s for p in predictions.values() for s in p.evidence.similarities), default=0.0
    )
    novel = resources.novelty is not None and resources.novelty.is_novel(top_similarity)
    explored = None
    conservative = None
    if novel and context.novel_queries == "strongest":
        conservative = strongest_plan(resources, context, options, more_options)
    if conservative is not None:
        candidates, options = conservative
    else:
        candidates, options, explored = explore(
            resources, context, state["query"], candidates, options, more_options
        )
    best_evidence = max(predictions.values(), key=lambda p: p.n_eff)
    mode: RouteMode = "hybrid" if refine else "learned"
    event = emit(
        runtime,
        "predicted",
        PredictedEvent(
            route_mode=mode,
            predictions={
                m: PredictionSummary(
                    p_success=round(p.p_success, 4),
                    exploration_bonus=round(p.exploration_bonus, 4),
                    n_eff=round(p.n_eff, 2),
                    prior=round(p.prior, 4),
                    expected_cost_usd=p.expected_cost_usd,
                )
                for m, p in predictions.items()
            },
            neighbours=list(best_evidence.evidence.query_ids[:5]),
            candidates=[c["model"] for c in candidates],
            explored=explored,
            top_similarity=round(float(top_similarity), 4),
            novel=novel,
        ),
    )
    return {"options": options, "candidates": candidates, "route_mode": mode, "trace": [event]}
