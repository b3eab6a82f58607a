"""The decision policy: when to stop, when to escalate, which answer to return.

Pure functions of a `CascadeView` (what the router knows after its latest attempt) and
`PolicySettings`. The graph's `decide` and `finalize` nodes call them, and so does every
replay in training and evaluation (`replay`), from the `decided` events the graph recorded:
there is one rule, so what is evaluated is what is served.

A replay may vary what only the policy reads (threshold, `stop_early`, `on_abstain`, budget,
and, through `with_confidences`, how judge scores combine), not what shaped the recorded
plan (which models, in which order): those need a new graph run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from emafusion.graph.context import Context
from emafusion.graph.state import Attempt, AttemptView, CascadeView, DecidedEvent, Decision

if TYPE_CHECKING:
    from emafusion.stores.combiner import CombinerBook


class PolicyError(ValueError):
    """A replay asked of a trace that cannot answer it (the message says why)."""


@dataclass(frozen=True)
class PolicySettings:
    threshold: float
    max_levels: int
    budget_usd: float | None = None
    stop_early: bool = True
    on_abstain: Literal["escalate", "return"] = "escalate"
    on_judge_failure: Literal["escalate", "trust_others"] = "escalate"

    @classmethod
    def from_context(cls, context: Context) -> PolicySettings:
        return cls(
            threshold=context.escalation_threshold,
            max_levels=context.max_levels,
            budget_usd=context.budget_usd,
            stop_early=context.stop_early,
            on_abstain=context.on_abstain,
            on_judge_failure=context.on_judge_failure,
        )


def view_of(attempt: Attempt) -> AttemptView:
    return AttemptView(
        model=attempt["model"],
        status=attempt["status"],
        confidence=attempt["confidence"],
        cost_usd=attempt["cost_usd"],
        judge_cost_usd=attempt["judge_cost_usd"],
        judge_scores=dict(attempt["judge_scores"]),
        judges_failed=list(attempt["judges_failed"]),
    )


def spent_usd(attempts: Sequence[AttemptView]) -> float:
    return sum(a["cost_usd"] + a["judge_cost_usd"] for a in attempts)


def decide(view: CascadeView, settings: PolicySettings) -> tuple[Decision, str]:
    """The decision after the latest attempt, and why."""
    attempts = view["attempts"]
    if not attempts:
        raise PolicyError("decide needs at least one attempt")
    current = attempts[-1]
    distrusted = bool(current["judges_failed"]) and settings.on_judge_failure == "escalate"
    if current["status"] == "answered" and settings.stop_early and not distrusted:
        confidence = current["confidence"]
        if confidence is None:
            if settings.on_abstain == "return":
                return "return", "no judge gave a score; on_abstain=return"
        elif confidence >= settings.threshold:
            return "return", f"confidence {confidence:.4f} >= threshold {settings.threshold}"
    next_cost = view["next_cost_usd"]
    if view["next_model"] is None or next_cost is None:
        return "exhausted", "no model left to call"
    answered = sum(1 for a in attempts if a["status"] == "answered")
    if answered >= settings.max_levels:
        return "max_levels", f"{answered} answers reached max_levels {settings.max_levels}"
    if settings.budget_usd is not None:
        # The next answer will be judged too, at about what judging this one cost.
        projected = spent_usd(attempts) + next_cost + current["judge_cost_usd"]
        if projected > settings.budget_usd:
            return "budget", (
                f"calling {view['next_model']} would bring the query to ${projected:.6f}, over "
                f"the budget ${settings.budget_usd:.6f}"
            )
    if current["status"] != "answered":
        return "escalate", f"{current['model']} {current['status']}"
    if distrusted:
        return "escalate", f"judge(s) {', '.join(current['judges_failed'])} failed (fail closed)"
    if current["confidence"] is None:
        return "escalate", "no judge gave a score (fail closed)"
    return "escalate", f"confidence {current['confidence']:.4f} < threshold {settings.threshold}"


def choose(attempts: Sequence[AttemptView], decision: Decision) -> tuple[int | None, str]:
    """The attempt whose answer is returned (None: nobody answered), and why.

    The attempt that cleared the threshold; else the most confident answer, the later
    (stronger) model on ties, since it was escalated to for a reason.
    """
    if decision == "return" and attempts and attempts[-1]["status"] == "answered":
        return len(attempts) - 1, "confident"
    answered = [i for i, a in enumerate(attempts) if a["status"] == "answered"]
    if not answered:
        return None, "no model answered"
    best = max(reversed(answered), key=lambda i: attempts[i]["confidence"] or 0.0)
    return best, f"{decision}: the most confident answer"


# --- confidences ---------------------------------------------------------------------------


def static_mean(scores: Mapping[str, float | None], weights: Mapping[str, float]) -> float | None:
    """Weighted mean of the judges that gave a score (None: none did)."""
    total = weight_sum = 0.0
    for judge, score in scores.items():
        weight = weights.get(judge, 1.0)
        if score is None or weight <= 0:
            continue
        total += weight * score
        weight_sum += weight
    return total / weight_sum if weight_sum > 0 else None


def combined_confidence(
    scores: Mapping[str, float | None],
    context: Context,
    combiners: CombinerBook | None,
) -> float | None:
    """The one confidence `context.combiner` makes of an answer's judge scores."""
    if context.combiner == "static":
        return static_mean(scores, context.judge_weights)
    if combiners is None:
        from emafusion.stores.combiner import CombinerError

        raise CombinerError(
            "Context.combiner='learned' but the router directory has no fitted combiner. Fix: "
            "run `emafusion judges train` for this router directory, or use combiner='static'."
        )
    # The combiner of exactly the configured judges: a judge left out was refitted without,
    # not given a zero weight.
    return combiners.get(context.judges).combine(dict(scores))


def with_confidences(
    view: CascadeView, confidence: Callable[[Mapping[str, float | None]], float | None]
) -> CascadeView:
    """The same view with every answered attempt's confidence recomputed from its scores
    (an answer a judge failed on keeps its fail-closed confidence)."""
    attempts = [
        AttemptView(
            **{
                **a,
                "confidence": confidence(a["judge_scores"])
                if a["status"] == "answered" and not a["judges_failed"]
                else a["confidence"],
            }
        )
        for a in view["attempts"]
    ]
    return CascadeView(
        attempts=attempts,
        next_model=view["next_model"],
        next_cost_usd=view["next_cost_usd"],
    )


# --- replay ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayOutcome:
    chosen: int | None  # index of the returned attempt; None: no answer
    model: str | None
    decision: Decision
    attempts: int  # models called (answered or failed)
    spent_usd: float
    confidence: float | None


def views_of(
    decided: Sequence[DecidedEvent],
    confidence: Callable[[Mapping[str, float | None]], float | None] | None = None,
) -> list[CascadeView]:
    """The policy inputs of a run's `decided` events (confidences recomputed if asked)."""
    views = [event["view"] for event in decided]
    return views if confidence is None else [with_confidences(v, confidence) for v in views]


def replay(views: Sequence[CascadeView], settings: PolicySettings) -> ReplayOutcome:
    """What the graph would have returned under `settings`, from a run's policy inputs
    (`views_of` its `decided` events).

    The run must have gone at least as far as these settings go: record it with
    `stop_early=False` (and no tighter budget), and any threshold is exact.
    """
    if not views:
        return ReplayOutcome(None, None, "exhausted", 0, 0.0, None)
    for index, view in enumerate(views):
        decision, _ = decide(view, settings)
        if decision == "escalate" and index < len(views) - 1:
            continue
        if decision == "escalate":
            raise PolicyError(
                f"the trace ends after {len(view['attempts'])} attempts where these settings "
                f"escalate to {view['next_model']}: record it with stop_early=False and "
                f"settings that go at least as far"
            )
        attempts = view["attempts"]
        chosen, _ = choose(attempts, decision)
        return ReplayOutcome(
            chosen,
            attempts[chosen]["model"] if chosen is not None else None,
            decision,
            len(attempts),
            spent_usd(attempts),
            attempts[chosen]["confidence"] if chosen is not None else None,
        )
    raise AssertionError("unreachable")
