"""The decision policy on hand-made cascade views."""

from __future__ import annotations

import pytest

from emafusion.graph.state import AttemptView, CascadeView
from emafusion.nodes import policy
from emafusion.nodes.policy import PolicyError, PolicySettings

_stages = iter(range(10**6))


def _a(
    model: str,
    confidence: float | None,
    cost: float = 1e-3,
    status: str = "answered",
    stage: int | None = None,
    key: str | None = None,
    reliability: float | None = None,
) -> AttemptView:
    return AttemptView(
        model=model,
        stage=next(_stages) if stage is None else stage,
        answer_key=key,
        reliability=reliability,
        status=status,  # type: ignore[typeddict-item]
        confidence=confidence if status == "answered" else None,
        cost_usd=cost,
        judge_cost_usd=0.0,
        judge_scores={"memory_prior": confidence} if status == "answered" else {},
        judges_failed=[],
    )


def _view(
    attempts: list[AttemptView], next_model: str | None = "next", cost: float = 1e-3
) -> CascadeView:
    return CascadeView(
        attempts=attempts,
        next_models=[next_model] if next_model else [],
        next_cost_usd=cost if next_model else None,
        n_options=4,
    )


SETTINGS = PolicySettings(threshold=0.7, max_levels=3)


def test_confident_answer_returns_else_escalates() -> None:
    assert policy.decide(_view([_a("m", 0.8)]), SETTINGS)[0] == "return"
    assert policy.decide(_view([_a("m", 0.7)]), SETTINGS)[0] == "return"  # >= threshold
    decision, reason = policy.decide(_view([_a("m", 0.5)]), SETTINGS)
    assert decision == "escalate" and "0.5000 < threshold 0.7" in reason


def test_nothing_left_level_cap_and_budget() -> None:
    assert policy.decide(_view([_a("m", 0.1)], next_model=None), SETTINGS)[0] == "exhausted"
    three = [_a("a", 0.1), _a("b", 0.2), _a("c", 0.3)]
    assert policy.decide(_view(three), SETTINGS)[0] == "max_levels"
    # Failures do not count toward the level cap.
    mixed = [_a("a", 0.1), _a("x", None, status="failed"), _a("b", 0.2)]
    assert policy.decide(_view(mixed), SETTINGS)[0] == "escalate"
    tight = PolicySettings(threshold=0.7, max_levels=3, budget_usd=1.5e-3)
    decision, reason = policy.decide(_view([_a("a", 0.1)], cost=1e-3), tight)
    assert decision == "budget" and "over the budget" in reason
    roomy = PolicySettings(threshold=0.7, max_levels=3, budget_usd=2.5e-3)
    assert policy.decide(_view([_a("a", 0.1)], cost=1e-3), roomy)[0] == "escalate"


def test_a_failed_call_escalates_and_never_returns() -> None:
    failed = [_a("down", None, status="failed")]
    assert policy.decide(_view(failed), SETTINGS)[0] == "escalate"
    assert policy.decide(_view(failed, next_model=None), SETTINGS)[0] == "exhausted"


def test_no_judge_spoke_is_an_explicit_choice() -> None:
    silent = [_a("m", None)]
    decision, reason = policy.decide(_view(silent), SETTINGS)
    assert decision == "escalate" and "fail closed" in reason
    trusting = PolicySettings(threshold=0.7, max_levels=3, on_abstain="return")
    decision, reason = policy.decide(_view(silent), trusting)
    assert decision == "return" and "on_abstain=return" in reason


def test_never_stopping_calls_every_level() -> None:
    settings = PolicySettings(threshold=0.0, max_levels=3, stop_early=False)
    assert policy.decide(_view([_a("m", 1.0)]), settings)[0] == "escalate"


def test_choose_the_confident_answer_else_the_most_confident_later_on_ties() -> None:
    def choose(attempts: list[AttemptView], decision: str) -> tuple[int | None, str]:
        return policy.choose(_view(attempts, None), decision, SETTINGS)  # type: ignore[arg-type]

    attempts = [_a("a", 0.4), _a("b", 0.6), _a("c", 0.6)]
    assert choose(attempts, "return")[0] == 2
    assert choose(attempts, "exhausted") == (2, "exhausted: the most confident answer")
    attempts = [_a("a", 0.9), _a("x", None, status="failed")]
    assert choose(attempts, "exhausted")[0] == 0
    assert choose([_a("x", None, status="failed")], "exhausted")[0] is None


def test_replay_stops_where_the_graph_would_and_refuses_what_it_cannot_know() -> None:
    # A never-stop trace of three levels, as the graph records it.
    levels = [_a("a", 0.5, 1e-3), _a("b", 0.75, 2e-3), _a("c", 0.9, 4e-3)]
    views = [
        _view(levels[:1], "b", 2e-3),
        _view(levels[:2], "c", 4e-3),
        _view(levels, None),
    ]
    at = policy.replay(views, PolicySettings(threshold=0.7, max_levels=3))
    assert (at.model, at.attempts, at.decision) == ("b", 2, "return")
    assert at.spent_usd == pytest.approx(3e-3)
    high = policy.replay(views, PolicySettings(threshold=0.95, max_levels=3))
    assert (high.model, high.attempts, high.decision) == ("c", 3, "exhausted")
    capped = policy.replay(views, PolicySettings(threshold=0.95, max_levels=2))
    assert (capped.model, capped.decision) == ("b", "max_levels")
    poor = policy.replay(views, PolicySettings(threshold=0.95, max_levels=3, budget_usd=2.5e-3))
    assert (poor.model, poor.attempts, poor.decision) == ("a", 1, "budget")
    # A trace cut short (it stopped at "a") cannot say what a stricter threshold does.
    views = [_view(levels[:1], "b", 2e-3)]
    with pytest.raises(PolicyError, match="record it with stop_early=False"):
        policy.replay(views, PolicySettings(threshold=0.95, max_levels=3))


def test_confidences_recomputed_for_another_combiner() -> None:
    view = _view([_a("a", 0.5), _a("b", 0.75)], None)
    doubled = policy.with_confidences(view, lambda s: min(1.0, 2 * (s["memory_prior"] or 0)))
    assert [a["confidence"] for a in doubled["attempts"]] == [1.0, 1.0]
    assert [a["confidence"] for a in view["attempts"]] == [0.5, 0.75]  # not modified


def test_static_mean_skips_abstentions_and_weighs() -> None:
    scores = {"a": 1.0, "b": 0.0, "c": None}
    assert policy.static_mean(scores, {}) == pytest.approx(0.5)
    assert policy.static_mean(scores, {"a": 3.0}) == pytest.approx(0.75)
    assert policy.static_mean({"c": None}, {}) is None


# --- fusion ---------------------------------------------------------------------------------

VOTE = PolicySettings(threshold=0.8, max_levels=5, fusion="vote")


def test_the_vote_weighs_answers_by_reliability() -> None:
    # Two fair models agree on B; a strong one says C: reliability decides.
    view = _view(
        [
            _a("a", None, stage=0, key="option:B", reliability=0.6),
            _a("b", None, stage=0, key="option:B", reliability=0.6),
            _a("c", None, stage=1, key="option:C", reliability=0.95),
        ],
        None,
    )
    fused = policy.fuse(view)
    assert fused is not None and fused.key == "option:C" and fused.chosen == 2
    # Three fair models outvote it.
    more = _view([*view["attempts"], _a("d", None, stage=1, key="option:B", reliability=0.6)])
    fused = policy.fuse(more)
    assert fused is not None and fused.key == "option:B"
    # The posterior is a probability, and agreement raises it.
    lone = policy.fuse(_view([_a("a", None, stage=0, key="option:B", reliability=0.6)]))
    pair = policy.fuse(
        _view(
            [
                _a("a", None, stage=0, key="option:B", reliability=0.6),
                _a("b", None, stage=0, key="option:B", reliability=0.6),
            ]
        )
    )
    assert lone is not None and pair is not None
    assert 0 < lone.posterior < pair.posterior < 1


def test_a_stage_returns_once_the_fused_answer_is_sure() -> None:
    agree = [
        _a("a", None, stage=0, key="option:B", reliability=0.8),
        _a("b", None, stage=0, key="option:B", reliability=0.8),
    ]
    differ = [
        _a("a", None, stage=0, key="option:B", reliability=0.8),
        _a("b", None, stage=0, key="option:C", reliability=0.8),
    ]
    assert policy.decide(_view(agree), VOTE)[0] == "return"
    assert policy.decide(_view(differ), VOTE)[0] == "escalate"
    index, reason = policy.choose(_view(agree, None), "return", VOTE)
    assert index == 1 and "2 of 2 answers" in reason
    # Nothing comparable: the most reliable answer, never trusted on its own word.
    vague = [_a("a", None, stage=0, reliability=0.9), _a("b", None, stage=0, reliability=0.7)]
    assert policy.decide(_view(vague), VOTE)[0] == "escalate"
    assert policy.choose(_view(vague, None), "exhausted", VOTE)[0] == 0
