"""Cascade planning and the offline judges, on hand-made cases."""

from __future__ import annotations

import pytest

from emafusion.graph.context import Context
from emafusion.graph.state import Attempt, Candidate, JudgeTask
from emafusion.nodes.decide import rescore_agreement
from emafusion.nodes.invoke_model import new_attempt
from emafusion.nodes.judges import UnknownJudgeError, get_judge, registered_judges
from emafusion.nodes.planning import plan_cascade, replan_after_failure
from emafusion.nodes.resources import RouterResources
from emafusion.stores.answers import option_count


def _c(model: str, p: float, cost: float) -> Candidate:
    return Candidate(
        model=model,
        stage=0,
        p_success=p,
        exploration_bonus=0.0,
        expected_cost_usd=cost,
        cost_bound_usd=cost,
        source="memory",
    )


def test_dominated_models_are_never_planned() -> None:
    options = [_c("a", 0.5, 1e-4), _c("b", 0.4, 2e-4), _c("c", 0.7, 3e-4), _c("d", 0.7, 9e-4)]
    assert [c["model"] for c in plan_cascade(options, max_levels=5)] == ["a", "c"]


def test_levels_keep_the_strongest() -> None:
    # Diminishing returns (a concave curve): every model is on the hull.
    options = [_c(str(i), 1 - 0.5 ** (i + 1), 1e-4 * (i + 1)) for i in range(6)]
    assert [c["model"] for c in plan_cascade(options, max_levels=3)] == ["3", "4", "5"]
    assert [c["model"] for c in plan_cascade(options, max_levels=1)] == ["5"]


def test_credibility_floor_and_cost_weight() -> None:
    options = [_c("weak", 0.2, 1e-5), _c("ok", 0.6, 1e-4), _c("best", 0.9, 1e-2)]
    assert [c["model"] for c in plan_cascade(options, 3, min_p_success=0.5)] == ["ok", "best"]
    # At 0.1 success per $1 per 1k queries, "best" (+0.3 for +$9.9/1k) is not worth it.
    assert [c["model"] for c in plan_cascade(options, 3, cost_weight=0.1)] == ["weak", "ok"]
    # Nobody credible: the best one still gets a try.
    assert [c["model"] for c in plan_cascade(options, 3, min_p_success=0.95)] == ["best"]


def test_option_count() -> None:
    assert option_count("Q?\nA. x\nB. y\nC. z") == 3
    assert option_count("Q?\nA) x\nB) y") == 2
    assert option_count("Explain photosynthesis.") == 0
    # Worked examples before the question do not count.
    assert option_count("Ex\nA) a\nB) b\nC) c\nAnswer:\nA\n\nQ?\nA) x\nB) y\nAnswer:") == 2


def _task(query: str, answer: str, p: float = 0.7) -> JudgeTask:
    return JudgeTask(
        judge="",
        attempt=0,
        query=query,
        record_id=None,
        category=None,
        model="m",
        answer=answer,
        p_success=p,
        earlier_answers=[],
    )


async def test_answer_format_judge() -> None:
    judge = get_judge("answer_format")
    mc = "Which?\nA. x\nB. y\nC. z"
    ctx = Context()
    assert (await judge.score(_task(mc, "The answer is (B)."), None, ctx)).score == 1.0  # type: ignore[arg-type]
    assert (await judge.score(_task(mc, "It could be several."), None, ctx)).score == 0.0  # type: ignore[arg-type]
    assert (await judge.score(_task(mc, "The answer is (F)."), None, ctx)).score == 0.0  # type: ignore[arg-type]
    free = "Explain photosynthesis."
    assert (await judge.score(_task(free, ""), None, ctx)).score == 0.0  # type: ignore[arg-type]
    refusal = "I can't help with that."
    assert (await judge.score(_task(free, refusal), None, ctx)).score < 0.5  # type: ignore[arg-type]


async def test_memory_prior_judge_reports_the_prediction() -> None:
    judge = get_judge("memory_prior")
    result = await judge.score(_task("q", "a", p=0.83), None, Context())  # type: ignore[arg-type]
    assert result.score == pytest.approx(0.83) and result.cost_usd == 0.0


def test_unknown_judge_names_the_registered_ones() -> None:
    assert {"memory_prior", "answer_format"} <= set(registered_judges())
    with pytest.raises(UnknownJudgeError, match="unknown judge 'oracle'.*answer_format"):
        get_judge("oracle")


def _answered(answer: str, confidence: float, scores: dict[str, float | None]) -> Attempt:
    return new_attempt(
        "m", "answered", answer=answer, confidence=confidence, judge_scores=dict(scores)
    )


def test_agreement_is_rescored_for_earlier_answers(tiny_resources: RouterResources) -> None:
    query = "Which?\nA. x\nB. y\nC. z"
    attempts = [
        _answered("The answer is (A).", 0.9, {"memory_prior": 0.8, "agreement": None}),
        new_attempt("down", "failed"),
        _answered("The answer is (B).", 0.4, {"memory_prior": 0.8, "agreement": 0.0}),
    ]
    context = Context(judges=("memory_prior", "agreement"))
    rescore_agreement(attempts, query, context, tiny_resources)
    # The first answer is now contradicted too: its confidence falls to the same mean.
    assert attempts[0]["judge_scores"] == {"memory_prior": 0.8, "agreement": 0.0}
    assert attempts[0]["confidence"] == pytest.approx(0.4)
    assert attempts[2]["confidence"] == 0.4  # the current attempt is judged by its judges
    # Without the agreement judge nothing changes.
    untouched = [
        _answered("The answer is (A).", 0.9, {"memory_prior": 0.8}),
        _answered("The answer is (B).", 0.4, {"memory_prior": 0.8}),
    ]
    rescore_agreement(untouched, query, Context(judges=("memory_prior",)), tiny_resources)
    assert untouched[0]["confidence"] == 0.9


def test_replan_after_a_failure_credits_dominated_models_again() -> None:
    options = [_c("a", 0.5, 1e-4), _c("b", 0.45, 2e-4), _c("c", 0.9, 1e-3)]
    plan = plan_cascade(options, max_levels=3)
    assert [c["model"] for c in plan] == ["a", "c"]
    attempts = [new_attempt("a", "failed")]
    replanned = replan_after_failure(plan, options, attempts, Context(max_levels=3))
    # "b" was dominated by "a"; with "a" down it is credible again.
    assert [c["model"] for c in replanned] == ["a", "b", "c"]


def test_a_near_tie_at_ten_times_the_price_is_not_planned() -> None:
    # claude-like: barely better than "yi" at ten times its price; "top" is clearly better.
    options = [_c("yi", 0.897, 4e-4), _c("pricey", 0.899, 4e-3), _c("top", 0.948, 5e-3)]
    assert [c["model"] for c in plan_cascade(options, max_levels=3)] == ["yi", "top"]


def test_the_exploration_bonus_orders_plans_but_never_reaches_a_judge() -> None:
    known = _c("known", 0.6, 1e-4)
    new = Candidate(**{**_c("new", 0.3, 2e-4), "exploration_bonus": 0.5})
    plan = plan_cascade([known, new], max_levels=3)
    # Optimistic, the new model is worth a try after the known one.
    assert [c["model"] for c in plan] == ["known", "new"]
    assert plan[1]["p_success"] == 0.3  # the prediction itself is untouched
