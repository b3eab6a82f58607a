"""The decision policy: when to stop, when to escalate, which answer to return.

Pure functions of a `CascadeView` (what the router knows after its latest stage),
`PolicySettings` and, for fused answers, the `FusionModel`. The graph's `decide` and
`finalize` nodes call them, and so does every replay in training and evaluation
(`replay`), from the `decided` events the graph recorded (or the traces training builds
the same way): there is one rule, so what is evaluated is what is served.

Two ways to answer:
- `last` (the paper's cascade): each answer has its judges' confidence; return the stage's
  answer once it clears the threshold, else the most confident answer at the end.
- `vote` (fusion): every answer gathered so far votes for its answer key, weighed by its
  model's reliability (naive Bayes over the query's options); the fused answer's
  confidence is the calibrated P(right) of that vote, and it is returned once it clears
  the threshold, or when nothing is left to call.

A replay may vary what only the policy reads (threshold, `stop_early`, `on_abstain`,
budget, fusion mode, the fusion model, and through `with_confidences` how judge scores
combine), not what shaped the recorded plan (which models, in which stages).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

from emafusion.graph.context import Context
from emafusion.graph.state import Attempt, AttemptView, CascadeView, DecidedEvent, Decision
from emafusion.stores.fusion import FusionModel

if TYPE_CHECKING:
    from emafusion.stores.combiner import CombinerBook

DEFAULT_FUSION = FusionModel()
# Reliabilities are clipped away from 0 and 1: one vote never decides alone for certain.
_EPS = 0.02


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
    fusion: Literal["last", "vote"] = "last"

    @classmethod
    def from_context(cls, context: Context) -> PolicySettings:
        return cls(
            threshold=context.escalation_threshold,
            max_levels=context.max_levels,
            budget_usd=context.budget_usd,
            stop_early=context.stop_early,
            on_abstain=context.on_abstain,
            on_judge_failure=context.on_judge_failure,
            fusion=context.fusion,
        )


def view_of(attempt: Attempt) -> AttemptView:
    return AttemptView(
        model=attempt["model"],
        stage=attempt["stage"],
        status=attempt["status"],
        confidence=attempt["confidence"],
        cost_usd=attempt["cost_usd"],
        judge_cost_usd=attempt["judge_cost_usd"],
        judge_scores=dict(attempt["judge_scores"]),
        judges_failed=list(attempt["judges_failed"]),
        answer_key=attempt["answer_key"],
        reliability=attempt["reliability"],
        memory_p=attempt.get("memory_p"),
    )


def spent_usd(attempts: Sequence[AttemptView]) -> float:
    return sum(a["cost_usd"] + a["judge_cost_usd"] for a in attempts)


def current_stage(attempts: Sequence[AttemptView]) -> list[AttemptView]:
    last = max(a["stage"] for a in attempts)
    return [a for a in attempts if a["stage"] == last]


# --- fusion ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fused:
    key: str | None
    chosen: int  # index of the attempt whose answer is returned
    posterior: float  # naive-Bayes P(this key is right)
    confidence: float  # calibrated P(right) (the posterior without a calibrator)
    features: tuple[float, ...]
    # Each answer key's softmax share of the vote (the top key's is `posterior`).
    shares: Mapping[str, float] = field(default_factory=dict)


def _logit(p: float) -> float:
    p = min(1.0 - 1e-6, max(1e-6, p))
    return math.log(p / (1.0 - p))


def _vote_weight(r: float, options: int) -> float:
    r = min(1.0 - _EPS, max(_EPS, r))
    return math.log(r * (options - 1) / (1.0 - r))


def _share(scores: Mapping[str, float], key: str, options: int) -> float:
    """The softmax share of `key` among the keys voted for and the options nobody chose."""
    peak = max(scores.values())
    unseen = max(0, options - len(scores))
    total = sum(math.exp(s - peak) for s in scores.values()) + unseen * math.exp(-peak)
    return math.exp(scores[key] - peak) / total


def fuse(view: CascadeView, model: FusionModel = DEFAULT_FUSION) -> Fused | None:
    """The weighted vote over every answer gathered so far (None: nobody answered).

    An answer with reliability r for key k adds log(r (K - 1) / (1 - r)) to k's score;
    each of the K options nobody chose scores 0; the posterior of the top key is its
    softmax share. The representative of a key is its most reliable answer (the later
    one on ties, which was called for a reason).

    The memory features read each answer's `memory_p` (the outcome memory's kNN P(success)
    of its model on this query; its reliability where the view has none): `memory_p` is
    the logit of the highest among the top key's answers, `memory_log_odds` the logit of
    the top key's share in the same vote weighed by `memory_p` instead of reliability.
    """
    attempts = view["attempts"]
    answered = [i for i, a in enumerate(attempts) if a["status"] == "answered"]
    if not answered:
        return None
    options = view["n_options"] or model.open_options
    scores: dict[str, float] = {}
    memory_scores: dict[str, float] = {}
    members: dict[str, list[int]] = {}

    def reliability(i: int) -> float:
        r = attempts[i]["reliability"]
        return r if r is not None else 0.5

    def memory(i: int) -> float:
        m = attempts[i].get("memory_p")
        return m if m is not None else reliability(i)

    for i in answered:
        key = attempts[i]["answer_key"]
        if key is None:
            continue
        scores[key] = scores.get(key, 0.0) + _vote_weight(reliability(i), options)
        memory_scores[key] = memory_scores.get(key, 0.0) + _vote_weight(memory(i), options)
        members.setdefault(key, []).append(i)

    stage = float(max(a["stage"] for a in attempts))
    if not scores:
        # No answer committed to anything comparable: the most reliable one, unfused.
        chosen = max(reversed(answered), key=reliability)
        r, m = reliability(chosen), memory(chosen)
        features = (
            _logit(r / options),
            0.0,
            0.0,
            0.0,
            _logit(r),
            stage,
            _logit(m),
            _logit(m / options),
        )
        calibrated = model.calibrated(features)
        low = r / options
        return Fused(None, chosen, low, low if calibrated is None else calibrated, features)
    top = max(scores, key=lambda k: (scores[k], len(members[k]), max(members[k])))
    posterior = _share(scores, top, options)
    chosen = max(reversed(members[top]), key=reliability)
    features = (
        _logit(posterior),
        float(len(members[top])),
        float(sum(len(m) for m in members.values())),
        float(len(scores)),
        _logit(max(reliability(i) for i in members[top])),
        stage,
        _logit(max(memory(i) for i in members[top])),
        _logit(_share(memory_scores, top, options)),
    )
    calibrated = model.calibrated(features)
    shares = {k: _share(scores, k, options) for k in scores}
    confidence = posterior if calibrated is None else calibrated
    return Fused(top, chosen, posterior, confidence, features, shares)


def answer_beliefs(
    view: CascadeView, settings: PolicySettings, model: FusionModel = DEFAULT_FUSION
) -> list[float | None]:
    """What the run believes of each answer it gathered: P(that answer is right), or None
    (not answered, or no judge spoke). This is what `record` stores as a judged outcome.

    `last`: each answer's judges' confidence. `vote`: the fused answer's key has the fused
    confidence; another key shares what is left (1 - confidence) in proportion to its
    share of the vote, so an answer that disagrees with a confident majority is believed
    wrong; an answer without a key keeps its judges' confidence.
    """
    attempts = view["attempts"]
    beliefs: list[float | None] = [
        a["confidence"] if a["status"] == "answered" else None for a in attempts
    ]
    if settings.fusion != "vote":
        return beliefs
    fused = fuse(view, model)
    if fused is None or fused.key is None:
        return beliefs
    rest = 1.0 - fused.shares[fused.key]
    for i, a in enumerate(attempts):
        key = a["answer_key"]
        if a["status"] != "answered" or key is None:
            continue
        if key == fused.key:
            beliefs[i] = fused.confidence
        else:
            share = fused.shares[key] / rest if rest > 0 else 0.0
            beliefs[i] = (1.0 - fused.confidence) * min(1.0, share)
    return beliefs


# --- decide and choose -------------------------------------------------------------------


@dataclass(frozen=True)
class StageSummary:
    """What decide and choose read of a view, computed once (`summarize`): a replay that
    tries many thresholds over the same traces reuses it."""

    answered: bool  # the latest stage has an answer
    distrusted: bool  # a judge failed on one of its answers (and failures escalate)
    confidence: float | None  # of the answer the router would return now
    returned: int | None  # the answer returned if the router stops here confident
    fallback: int | None  # the answer returned if it stops without confidence
    answers: int = 0  # answers gathered so far (every stage)
    spent_usd: float = 0.0
    stage_judge_usd: float = 0.0  # mean judging cost of an answer of the latest stage


def summarize(
    view: CascadeView, settings: PolicySettings, model: FusionModel = DEFAULT_FUSION
) -> StageSummary:
    attempts = view["attempts"]
    if not attempts:
        return StageSummary(False, False, None, None, None)
    last = max(a["stage"] for a in attempts)
    stage = [i for i, a in enumerate(attempts) if a["stage"] == last]
    answered = [i for i in stage if attempts[i]["status"] == "answered"]
    everyone = [i for i, a in enumerate(attempts) if a["status"] == "answered"]
    distrusted = settings.on_judge_failure == "escalate" and any(
        attempts[i]["judges_failed"] for i in answered
    )
    costs = dict(
        answers=len(everyone),
        spent_usd=spent_usd(attempts),
        stage_judge_usd=sum(attempts[i]["judge_cost_usd"] for i in stage) / len(stage),
    )
    if settings.fusion == "vote":
        fused = fuse(view, model)
        chosen = None if fused is None else fused.chosen
        confidence = None if fused is None or not answered else fused.confidence
        return StageSummary(bool(answered), distrusted, confidence, chosen, chosen, **costs)
    fallback = (
        max(reversed(everyone), key=lambda i: attempts[i]["confidence"] or 0.0)
        if everyone
        else None
    )
    current = answered[-1] if answered else None
    confidence = attempts[current]["confidence"] if current is not None else None
    return StageSummary(bool(answered), distrusted, confidence, current, fallback, **costs)


def stage_confidence(
    view: CascadeView, settings: PolicySettings, model: FusionModel = DEFAULT_FUSION
) -> float | None:
    """How sure the router is of the answer it would return now (None: no judge spoke)."""
    return summarize(view, settings, model).confidence


def decide(
    view: CascadeView,
    settings: PolicySettings,
    model: FusionModel = DEFAULT_FUSION,
    summary: StageSummary | None = None,
) -> tuple[Decision, str]:
    """The decision after the latest stage, and why."""
    attempts = view["attempts"]
    if not attempts:
        raise PolicyError("decide needs at least one attempt")
    summary = summary or summarize(view, settings, model)
    confidence = summary.confidence
    if summary.answered and settings.stop_early and not summary.distrusted:
        if confidence is None:
            if settings.on_abstain == "return":
                return "return", "no judge gave a score; on_abstain=return"
        elif confidence >= settings.threshold:
            return "return", f"confidence {confidence:.4f} >= threshold {settings.threshold}"
    next_cost = view["next_cost_usd"]
    if not view["next_models"] or next_cost is None:
        return "exhausted", "no model left to call"
    if summary.answers >= settings.max_levels:
        return "max_levels", f"{summary.answers} answers reached max_levels {settings.max_levels}"
    if settings.budget_usd is not None:
        # The next answers will be judged too, at about what judging these cost.
        judging = summary.stage_judge_usd * len(view["next_models"])
        projected = summary.spent_usd + next_cost + judging
        if projected > settings.budget_usd:
            return "budget", (
                f"calling {', '.join(view['next_models'])} would bring the query to "
                f"${projected:.6f}, over the budget ${settings.budget_usd:.6f}"
            )
    if not summary.answered:
        stage = current_stage(attempts)
        return "escalate", ", ".join(f"{a['model']} {a['status']}" for a in stage)
    if summary.distrusted:
        failed = sorted({j for a in current_stage(attempts) for j in a["judges_failed"]})
        return "escalate", f"judge(s) {', '.join(failed)} failed (fail closed)"
    if confidence is None:
        return "escalate", "no judge gave a score (fail closed)"
    return "escalate", f"confidence {confidence:.4f} < threshold {settings.threshold}"


def choose(
    view: CascadeView,
    decision: Decision,
    settings: PolicySettings,
    model: FusionModel = DEFAULT_FUSION,
    summary: StageSummary | None = None,
) -> tuple[int | None, str]:
    """The attempt whose answer is returned (None: nobody answered), and why."""
    summary = summary or summarize(view, settings, model)
    attempts = view["attempts"]
    if settings.fusion == "vote":
        if summary.returned is None:
            return None, "no model answered"
        key = attempts[summary.returned]["answer_key"]
        members = sum(1 for a in attempts if key is not None and a["answer_key"] == key) or 1
        answered = sum(1 for a in attempts if a["status"] == "answered")
        confidence = summary.confidence if summary.confidence is not None else float("nan")
        return summary.returned, (
            f"{decision}: the fused answer ({members} of {answered} answers, P(right) "
            f"{confidence:.3f})"
        )
    if decision == "return" and summary.returned is not None:
        return summary.returned, "confident"
    if summary.fallback is None:
        return None, "no model answered"
    return summary.fallback, f"{decision}: the most confident answer"


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
    return CascadeView(**{**view, "attempts": attempts})


# --- replay ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayOutcome:
    chosen: int | None  # index of the returned attempt; None: no answer
    model: str | None
    decision: Decision
    attempts: int  # models called (answered or failed)
    spent_usd: float
    confidence: float | None
    stages: int = 0


def views_of(
    decided: Sequence[DecidedEvent],
    confidence: Callable[[Mapping[str, float | None]], float | None] | None = None,
) -> list[CascadeView]:
    """The policy inputs of a run's `decided` events (confidences recomputed if asked)."""
    views = [event["view"] for event in decided]
    return views if confidence is None else [with_confidences(v, confidence) for v in views]


def replay(
    views: Sequence[CascadeView],
    settings: PolicySettings,
    model: FusionModel = DEFAULT_FUSION,
    summaries: Sequence[StageSummary] | None = None,
) -> ReplayOutcome:
    """What the graph would have returned under `settings`, from a run's policy inputs
    (`views_of` its `decided` events, one per stage).

    The run must have gone at least as far as these settings go: record it with
    `stop_early=False` (and no tighter budget), and any threshold is exact.
    """
    if not views:
        return ReplayOutcome(None, None, "exhausted", 0, 0.0, None)
    if summaries is None:
        summaries = [summarize(v, settings, model) for v in views]
    for index, (view, summary) in enumerate(zip(views, summaries, strict=True)):
        decision, _ = decide(view, settings, model, summary)
        if decision == "escalate" and index < len(views) - 1:
            continue
        if decision == "escalate":
            raise PolicyError(
                f"the trace ends after {len(view['attempts'])} attempts where these settings "
                f"escalate to {', '.join(view['next_models'])}: record it with "
                f"stop_early=False and settings that go at least as far"
            )
        attempts = view["attempts"]
        chosen, _ = choose(view, decision, settings, model, summary)
        confidence = (
            summary.confidence
            if settings.fusion == "vote"
            else (attempts[chosen]["confidence"] if chosen is not None else None)
        )
        return ReplayOutcome(
            chosen,
            attempts[chosen]["model"] if chosen is not None else None,
            decision,
            len(attempts),
            summary.spent_usd,
            confidence,
            index + 1,
        )
    raise AssertionError("unreachable")


def at_threshold(settings: PolicySettings, threshold: float | None) -> PolicySettings:
    """The same policy at `threshold` (None: never stop early)."""
    if threshold is None:
        return replace(settings, stop_early=False)
    return replace(settings, threshold=threshold, stop_early=True)
