"""The router's typed state. A leaf module: it imports nothing of the project's.

TypedDicts (from typing_extensions) so that the LangGraph server can publish schemas.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, Literal, NotRequired

from typing_extensions import TypedDict

RouteMode = Literal["taxonomy", "learned", "hybrid"]
AttemptStatus = Literal["answered", "failed", "unavailable"]


class Candidate(TypedDict):
    """A model the router may call, with what it expects of it."""

    model: str
    p_success: float
    expected_cost_usd: float
    source: str  # "taxonomy" | "memory" | "prior"


class JudgeVerdict(TypedDict):
    judge: str
    attempt: int  # index into attempts
    score: float | None  # confidence in [0, 1] that the answer is right; None: abstained
    cost_usd: float
    detail: str
    latency_ms: float


class Attempt(TypedDict):
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
    judge_scores: dict[str, float]
    judge_cost_usd: float
    confidence: float | None
    decision: str | None  # "return" | "escalate" | "exhausted" | "budget" | "max_levels"


class TraceEvent(TypedDict):
    """One decision, as streamed to custom-mode listeners and kept in the final state."""

    event: str  # classified | predicted | invoking | failed | judged | escalating | returned
    data: dict[str, Any]


class RouterInput(TypedDict):
    query: str
    record_id: NotRequired[str | None]


class RouterOutput(TypedDict):
    answer: str | None
    model: str | None
    confidence: float | None
    cost_usd: float
    escalation_path: list[str]
    overhead_ms: float  # time in the graph outside model and judge calls
    trace: list[TraceEvent]


class RouterState(TypedDict):
    query: str
    record_id: NotRequired[str | None]
    # Embedded once by classify; every later node reads this vector, none embeds again.
    query_vector: NotRequired[list[float]]
    category_probs: NotRequired[dict[str, float]]
    category: NotRequired[str | None]
    route_mode: NotRequired[RouteMode]
    # Every model considered, with its prediction; the cascade is planned from these, and
    # replanned from them when a model fails.
    options: NotRequired[list[Candidate]]
    candidates: NotRequired[list[Candidate]]
    attempts: NotRequired[list[Attempt]]
    # Judges run in parallel (Send); their verdicts meet through this reducer.
    verdicts: NotRequired[Annotated[list[JudgeVerdict], operator.add]]
    answer: NotRequired[str | None]
    model: NotRequired[str | None]
    confidence: NotRequired[float | None]
    cost_usd: NotRequired[float]
    escalation_path: NotRequired[list[str]]
    # Routing work per node, summed: the router's overhead (see nodes/timing.py).
    router_ms: NotRequired[Annotated[float, operator.add]]
    overhead_ms: NotRequired[float]
    trace: NotRequired[Annotated[list[TraceEvent], operator.add]]


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
