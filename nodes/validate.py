"""Settings checked against the deployment's resources when a run starts.

A misspelt judge, a learned combiner that was never fitted, or a model missing from the
pool is an error before any model is paid for, naming the field and the valid names; it is
never a silent abstention that turns the cascade off.
"""

from __future__ import annotations

from emafusion.graph.context import Context, ContextError
from emafusion.nodes.judges import registered_judges
from emafusion.nodes.resources import RouterResources
from emafusion.stores.combiner import subset_key


def allowed_models(context: Context, resources: RouterResources) -> list[str]:
    """The pool models this run may call to answer, in pool order (`Context.models`)."""
    if context.models is None:
        return list(resources.pool.names)
    allowed = set(context.models)
    return [name for name in resources.pool.names if name in allowed]


def check_run(context: Context, resources: RouterResources) -> None:
    known = registered_judges()
    unknown = [j for j in context.judges if j not in known]
    if unknown:
        raise ContextError(
            f"Context.judges: unknown judge(s) {unknown}; registered: {', '.join(known)}. "
            f"Fix: correct the names, or register the judge with register_judge()."
        )
    if context.combiner == "learned":
        book = resources.combiners
        fitted = sorted("+".join(k) for k in book.combiners) if book else []
        if book is None or subset_key(context.judges) not in book.combiners:
            raise ContextError(
                f"Context.combiner='learned': no combiner fitted for judges "
                f"{list(subset_key(context.judges))}; fitted: {', '.join(fitted) or 'none'}. "
                f"Fix: set Context.judges to a fitted subset, use combiner='static', or run "
                f"`emafusion judges train` with these judges."
            )
    unweighted = [j for j in context.judge_weights if j not in context.judges]
    if unweighted:
        raise ContextError(
            f"Context.judge_weights names {unweighted}, which are not in Context.judges "
            f"{list(context.judges)}. Fix: drop them or add the judges."
        )
    if "llm" in context.judges and not context.llm_judge:
        raise ContextError(
            "Context.judges has 'llm' but Context.llm_judge is not set. Fix: name the judge "
            "model (from the deployment's judge pool or the pool)."
        )
    if context.llm_judge and "llm" not in context.judges:
        raise ContextError(
            f"Context.llm_judge={context.llm_judge!r} but 'llm' is not in Context.judges. Fix: "
            f"add 'llm' to the judges, or drop llm_judge."
        )
    if context.llm_judge:
        names = {*resources.judge_models, *resources.pool.names}
        if context.llm_judge not in names:
            raise ContextError(
                f"Context.llm_judge: {context.llm_judge!r} is not a model of the judge pool or "
                f"the pool; known: {', '.join(sorted(names))}."
            )
    if context.llm_classifier and context.llm_classifier not in resources.pool.names:
        raise ContextError(
            f"Context.llm_classifier: {context.llm_classifier!r} is not in the pool; pool: "
            f"{', '.join(resources.pool.names)}."
        )
    if context.models is not None:
        unknown_models = [m for m in context.models if m not in resources.pool.names]
        if unknown_models:
            raise ContextError(
                f"Context.models: {unknown_models} not in the pool; pool: "
                f"{', '.join(resources.pool.names)}. Fix: name pool models, or leave it unset."
            )
