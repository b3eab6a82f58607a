"""The decision policy on hand-made cascade views."""

from __future__ import annotations

import pytest

from emafusion.graph.state import AttemptView, CascadeView
from emafusion.nodes import policy
from emafusion.nodes.policy import PolicyError, PolicySettings


def _a(
    model: str, confidence: float | None, cost: float = 1e-3, status: str = "answered"
) -> AttemptView:
    return AttemptView(
        model=model,
        status=status,  # type: ignore[typeddict-item]
        confidence=confidence if status == "answered" else None,
        cost_usd=cost,
        judge_cost_usd=0.0,
        judge_scores={"memory_prior": confidence} if status == "answered" else {},
        judges_failed=[],
    )


def _view(attempts: list[AttemptView], next_model: str | None = "next", cost: float = 1e-3):
    return CascadeView(
        attempts=attempts,
        next_model=next_model,
        next_cost_usd=cost if next_model else None,
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
    attempts = [_a("a", 0.4), _a("b", 0.6), _a("c", 0.6)]
    assert policy.choose(attempts, "return")[0] == 2
    assert policy.choose(attempts, "exhausted") == (2, "exhausted: the most confident answer")
    attempts = [_a("a", 0.9), _a("x", None, status="failed")]
    assert policy.choose(attempts, "exhausted")[0] == 0
    assert policy.choose([_a("x", None, status="failed")], "exhausted")[0] is None


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
    with pytest.raises(PolicyError, match="record it with stop_early=False"):
        policy.replay(views[:1], PolicySettings(threshold=0.95, max_levels=3))


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
