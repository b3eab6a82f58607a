"""Cascade planning and the offline judges, on hand-made cases."""

from __future__ import annotations

import pytest

from emafusion.graph.context import Context
from emafusion.graph.state import Candidate, JudgeTask, JudgeVerdict
from emafusion.nodes.cascade import plan_cascade
from emafusion.nodes.escalate import combine
from emafusion.nodes.judges import get_judge, registered_judges
from emafusion.stores.answers import option_count


def _c(model: str, p: float, cost: float) -> Candidate:
    return Candidate(model=model, p_success=p, expected_cost_usd=cost, source="memory")


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


def test_combine_is_a_weighted_mean_that_skips_abstentions() -> None:
    verdicts = [
        JudgeVerdict(judge="a", attempt=0, score=1.0, cost_usd=0, detail="", latency_ms=0),
        JudgeVerdict(judge="b", attempt=0, score=0.0, cost_usd=0, detail="", latency_ms=0),
        JudgeVerdict(judge="c", attempt=0, score=None, cost_usd=0, detail="", latency_ms=0),
    ]
    assert combine(verdicts, {}) == pytest.approx(0.5)
    assert combine(verdicts, {"a": 3.0}) == pytest.approx(0.75)
    assert combine(verdicts[2:], {}) is None


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
    with pytest.raises(KeyError, match="unknown judge 'oracle'.*answer_format"):
        get_judge("oracle")


async def test_agreement_is_rescored_for_earlier_answers() -> None:
    from emafusion.nodes.escalate import rescore_agreement

    query = "Which?\nA. x\nB. y\nC. z"
    attempts: list[dict[str, object]] = [
        {
            "status": "answered",
            "answer": "The answer is (A).",
            "confidence": 0.9,
            "judge_scores": {"memory_prior": 0.8, "agreement": None},
        },
        {"status": "failed", "answer": None, "confidence": None, "judge_scores": {}},
        {
            "status": "answered",
            "answer": "The answer is (B).",
            "confidence": 0.4,
            "judge_scores": {"memory_prior": 0.8, "agreement": 0.0},
        },
    ]
    context = Context(judges=("memory_prior", "agreement"))
    await rescore_agreement(attempts, query, context)  # type: ignore[arg-type]
    # The first answer is now contradicted too: its confidence falls to the same mean.
    assert attempts[0]["judge_scores"] == {"memory_prior": 0.8, "agreement": 0.0}
    assert attempts[0]["confidence"] == pytest.approx(0.4)
    assert attempts[2]["confidence"] == 0.4  # the current attempt is judged by its judges
    # Without the agreement judge nothing changes.
    untouched = [dict(a) for a in attempts]
    untouched[0]["confidence"] = 0.9
    await rescore_agreement(untouched, query, Context(judges=("memory_prior",)))  # type: ignore[arg-type]
    assert untouched[0]["confidence"] == 0.9


def test_a_near_tie_at_ten_times_the_price_is_not_planned() -> None:
    # claude-like: barely better than "yi" at ten times its price; "top" is clearly better.
    options = [_c("yi", 0.897, 4e-4), _c("pricey", 0.899, 4e-3), _c("top", 0.948, 5e-3)]
    assert [c["model"] for c in plan_cascade(options, max_levels=3)] == ["yi", "top"]
