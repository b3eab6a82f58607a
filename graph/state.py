"""The router's typed state and event payloads. A leaf module: it imports nothing of ours.

TypedDicts (from typing_extensions) so that the LangGraph server can publish schemas, and
so that the state and every event serialize as plain JSON (checkpointers, the trace).

The `decided` event is the contract between the graph and every replay: it carries the
whole `CascadeView` the decision policy saw, so training and evaluation can ask the policy
again under other settings (`emafusion.nodes.policy.replay`) and get the graph's answer.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, Literal, NotRequired

from typing_extensions import TypedDict

RouteMode = Literal["taxonomy", "learned", "hybrid", "planned"]
AttemptStatus = Literal["answered", "failed", "unavailable"]
CandidateSource = Literal["taxonomy", "memory", "prior", "fallback", "exploration"]
# What the decide node concluded after an attempt:
# return: a confident answer; escalate: call the next planned model; exhausted: no model
# left to call; budget: the next call would break the budget; max_levels: the level cap.
Decision = Literal["return", "escalate", "exhausted", "budget", "max_levels"]
EventName = Literal[
    "classified",
    "predicted",
    "invoking",
    "failed",
    "decided",
    "escalating",
    "returned",
    "recorded",
]


class Candidate(TypedDict):
    """A model the router may call, with what it expects of it."""

    model: str
    # Models of one stage are called at once (in parallel); stages run in order.
    stage: int
    p_success: float  # the prediction (what judges read)
    exploration_bonus: float  # added for planning only, so little-known models get tried
    expected_cost_usd: float  # what such a call costs on average (plans are built on it)
    cost_bound_usd: float  # what it may cost at most, before it is made (budgets use it)
    source: CandidateSource


class JudgeVerdict(TypedDict):
    judge: str
    attempt: int  # index into attempts
    score: float | None  # confidence in [0, 1] that the answer is right; None: abstained
    cost_usd: float
    detail: str
    latency_ms: float
    failed: bool  # the judge errored or returned garbage (fails closed; never a score)


class Attempt(TypedDict):
    index: int  # position in the run's attempts (parallel calls merge by it)
    stage: int
    model: str
    status: AttemptStatus
    answer: str | None
    error: str | None
    input_tokens: int
    output_tokens: int
    usage_estimated: bool
    cost_usd: float
    cost_source: str
    latency_ms: float
    judge_scores: dict[str, float | None]
    judge_cost_usd: float
    # Judges that could not judge this answer: it is never trusted (nor recorded) on them.
    judges_failed: list[str]
    # What the answer says, as a key equal answers share (an option letter, a number,
    # normalized short text); None: no comparable answer.
    answer_key: str | None
    # P(this model is right on a query like this one), before reading the answer; the
    # weight of its vote when answers are fused.
    reliability: float | None
    # The outcome memory's kNN P(success) of this model on this very query (its nearest
    # stored queries), before reading the answer; a feature of the fused confidence.
    memory_p: float | None
    confidence: float | None
    decision: Decision | None


class AttemptView(TypedDict):
    """What the decision policy reads of one attempt (a projection of `Attempt`)."""

    model: str
    stage: int
    status: AttemptStatus
    confidence: float | None
    cost_usd: float
    judge_cost_usd: float
    judge_scores: dict[str, float | None]
    judges_failed: list[str]
    answer_key: str | None
    reliability: float | None
    # Absent from views recorded before the memory features: read as unknown.
    memory_p: NotRequired[float | None]


class CascadeView(TypedDict):
    """Everything the decision policy decides on, after the latest stage."""

    attempts: list[AttemptView]
    # The models the plan would call next (one stage) and what their calls may cost
    # together (the pre-call bound); empty / None: nothing left.
    next_models: list[str]
    next_cost_usd: float | None
    # Options of a multiple-choice query (0: open answers), for fusing votes.
    n_options: int


# --- event payloads ------------------------------------------------------------------------


class ClassifiedEvent(TypedDict):
    category: str
    confidence: float
    top: list[tuple[str, float]]
    fused_llm: bool
    route_mode: RouteMode
    candidates: list[str]
    explored: str | None  # a model with too little history, tried at the top of the plan
    # Models a fixed plan left out: live evidence says they went worse (drift).
    degraded: list[str]
    # Degraded models kept in this run's plan, on the share that tests whether they recovered.
    retested: list[str]
    # The degraded model whose fallback plan (`Context.fallback_plans`) the run switched to.
    fallback_for: str | None


class PredictionSummary(TypedDict):
    p_success: float
    exploration_bonus: float
    n_eff: float
    prior: float
    expected_cost_usd: float | None


class PredictedEvent(TypedDict):
    route_mode: RouteMode
    predictions: dict[str, PredictionSummary]
    neighbours: list[str]
    candidates: list[str]
    explored: str | None
    top_similarity: float  # of the nearest stored query with counted evidence
    novel: bool  # below the router's novelty threshold: routed as `Context.novel_queries` says


class InvokingEvent(TypedDict):
    model: str
    level: int


class FailedEvent(TypedDict):
    model: str
    error: str
    unavailable: bool


class DecidedEvent(TypedDict):
    model: str
    status: AttemptStatus
    confidence: float | None
    threshold: float
    judge_costs: dict[str, float]
    decision: Decision
    reason: str
    spent_usd: float
    # The policy's whole input, as it stood (agreement re-scored): replays decide from it.
    view: CascadeView


class EscalatingEvent(TypedDict):
    to: str
    reason: str


class AnswerBelief(TypedDict):
    """What the run believes of one answer it gathered (`policy.answer_beliefs`), beside
    the memory's prediction for its model: what `record` may store as a judged outcome."""

    model: str
    belief: float
    memory_p: float | None


class ReturnedEvent(TypedDict):
    run_id: str
    model: str | None
    confidence: float | None
    cost_usd: float
    escalation_path: list[str]
    answered: bool
    cost_sources: list[str]
    reason: str
    # Every answer a judge spoke on without failing (answers judges failed on are not
    # believed, and never recorded).
    beliefs: list[AnswerBelief]


class RecordedEvent(TypedDict):
    query_id: str
    models: list[str]


EventData = (
    ClassifiedEvent
    | PredictedEvent
    | InvokingEvent
    | FailedEvent
    | DecidedEvent
    | EscalatingEvent
    | ReturnedEvent
    | RecordedEvent
)


class TraceEvent(TypedDict):
    """One decision, as streamed to custom-mode listeners and kept in the final state."""

    event: EventName
    data: EventData


# --- graph input, output, state --------------------------------------------------------------


class RouterInput(TypedDict):
    query: str
    record_id: NotRequired[str | None]


class RouterOutput(TypedDict):
    run_id: str  # what feedback on this answer names (`submit_feedback`)
    answer: str | None
    model: str | None
    confidence: float | None
    cost_usd: float
    escalation_path: list[str]
    overhead_ms: float  # time in the graph outside model and judge calls
    trace: list[TraceEvent]


def merge_attempts(left: list[Attempt] | None, right: list[Attempt] | None) -> list[Attempt]:
    """The attempts reducer: an update replaces attempts by index and appends new ones."""
    merged = {a["index"]: a for a in left or []}
    for attempt in right or []:
        merged[attempt["index"]] = attempt
    return [merged[i] for i in sorted(merged)]


class RouterState(TypedDict):
    query: str
    record_id: NotRequired[str | None]
    # The run's effective settings (its preset, overridden by what the run set), resolved
    # once when the run starts; every later node and edge reads them.
    settings: NotRequired[dict[str, Any]]
    run_id: NotRequired[str]
    # Embedded once by classify; every later node reads this vector, none embeds again.
    query_vector: NotRequired[list[float]]
    category_probs: NotRequired[dict[str, float]]
    category: NotRequired[str | None]
    route_mode: NotRequired[RouteMode]
    # Every model considered, with its prediction; the cascade is planned from these, and
    # replanned from them when a model fails.
    options: NotRequired[list[Candidate]]
    candidates: NotRequired[list[Candidate]]
    # Parallel calls of one stage each add their attempt; decide updates them (by index).
    attempts: NotRequired[Annotated[list[Attempt], merge_attempts]]
    # Judges run in parallel (Send); their verdicts meet through this reducer.
    verdicts: NotRequired[Annotated[list[JudgeVerdict], operator.add]]
    answer: NotRequired[str | None]
    model: NotRequired[str | None]
    confidence: NotRequired[float | None]
    cost_usd: NotRequired[float]
    escalation_path: NotRequired[list[str]]
    # Per attempt, P(its answer is right) as the run believes it at the end (None: not
    # answered or unjudged): what `record` stores as judged outcomes (`policy.answer_beliefs`).
    answer_beliefs: NotRequired[list[float | None]]
    # Routing work per node, summed: the router's overhead (see nodes/timing.py).
    router_ms: NotRequired[Annotated[float, operator.add]]
    overhead_ms: NotRequired[float]
    trace: NotRequired[Annotated[list[TraceEvent], operator.add]]


class CallTask(TypedDict):
    """What one model call receives through `Send` (a stage's models run in parallel)."""

    model: str
    index: int
    stage: int
    query: str
    record_id: str | None


class JudgeTask(TypedDict):
    """What one judge receives through `Send`."""

    judge: str
    attempt: int
    query: str
    record_id: str | None
    category: str | None
    model: str
    answer: str
    p_success: float
    earlier_answers: list[str]
    # The query's embedding from classify, so judges that need it (the verifier) do not
    # embed again.
    query_vector: NotRequired[list[float] | None]
