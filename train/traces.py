"""Judged traces: every level of every cascade on a split, recorded from one graph run that
called every planned level (`Context(stop_early=False)`), with each answer's correctness.

What threshold selection, combiner fitting and the evaluation's read-offs learn from.
Decisions are replayed through the one decision policy (`emafusion.nodes.policy`), so a
threshold read off these traces is exactly what the graph does at it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from emafusion.graph.state import CascadeView, DecidedEvent
from emafusion.nodes import policy
from emafusion.stores.recordings import Record
from emafusion.train.combiner import JudgeSignals

Confidence = Callable[[Mapping[str, float | None]], float | None]


@dataclass(frozen=True)
class QueryTrace:
    query_id: str
    decided: tuple[DecidedEvent, ...]
    score: Mapping[str, float]  # recorded score of each model that has a recording


def decided_events(trace: Sequence[Mapping[str, object]]) -> list[DecidedEvent]:
    return [e["data"] for e in trace if e["event"] == "decided"]


@dataclass(frozen=True)
class CascadeResult:
    threshold: float
    accuracy: float
    cost_per_1k: float
    escalation_rate: float
    mean_levels: float
    correct: np.ndarray = field(repr=False, compare=False)
    levels: np.ndarray = field(repr=False, compare=False)


@dataclass(frozen=True)
class JudgedTraces:
    judges: tuple[str, ...]
    queries: tuple[QueryTrace, ...]

    @classmethod
    def from_traces(
        cls,
        records: Sequence[Record],
        traces: Sequence[Sequence[Mapping[str, object]]],
        judges: Sequence[str],
    ) -> JudgedTraces:
        return cls(
            tuple(judges),
            tuple(
                QueryTrace(
                    record.id,
                    tuple(decided_events(trace)),
                    {m: o.score for m, o in record.outcomes.items()},
                )
                for record, trace in zip(records, traces, strict=True)
            ),
        )

    def __len__(self) -> int:
        return len(self.queries)

    def signals(self) -> JudgeSignals:
        """Every answer as judged at its own level (before later answers re-scored it)."""
        scores, costs, labels, groups = [], [], [], []
        for q, query in enumerate(self.queries):
            for event in query.decided:
                attempt = event["view"]["attempts"][-1]
                if attempt["status"] != "answered":
                    continue
                by_judge = attempt["judge_scores"]
                scores.append([_nan(by_judge.get(j)) for j in self.judges])
                costs.append([event["judge_costs"].get(j, 0.0) for j in self.judges])
                labels.append(query.score.get(attempt["model"], 0.0) >= 0.5)
                groups.append(q)
        n, j = len(labels), len(self.judges)
        return JudgeSignals(
            self.judges,
            np.asarray(scores, dtype=np.float64).reshape(n, j),
            np.asarray(costs, dtype=np.float64).reshape(n, j),
            np.asarray(labels, dtype=bool),
            groups=np.asarray(groups, dtype=np.int64),
        )

    def views(self, confidence: Confidence | None = None) -> list[list[CascadeView]]:
        """Each query's policy inputs (confidences recomputed by `confidence` if given)."""
        return [policy.views_of(q.decided, confidence) for q in self.queries]

    def evaluate(
        self, settings: policy.PolicySettings, views: Sequence[Sequence[CascadeView]]
    ) -> CascadeResult:
        """The cascade under `settings`, replayed query by query through the policy."""
        correct = np.zeros(len(self.queries))
        cost = np.zeros(len(self.queries))
        levels = np.zeros(len(self.queries))
        for i, (query, query_views) in enumerate(zip(self.queries, views, strict=True)):
            outcome = policy.replay(query_views, settings)
            correct[i] = query.score.get(outcome.model, 0.0) if outcome.model else 0.0
            cost[i] = outcome.spent_usd
            levels[i] = outcome.attempts
        n = max(1, len(self.queries))
        return CascadeResult(
            threshold=settings.threshold,
            accuracy=float(correct.sum() / n),
            cost_per_1k=float(cost.sum() / n) * 1000.0,
            escalation_rate=float((levels > 1).sum() / n),
            mean_levels=float(levels.sum() / n),
            correct=correct,
            levels=levels,
        )

    def confidences(self, views: Sequence[Sequence[CascadeView]]) -> np.ndarray:
        """Every answered attempt's confidence as first judged (for candidate thresholds)."""
        values = [
            v["attempts"][-1]["confidence"]
            for query_views in views
            for v in query_views
            if v["attempts"][-1]["status"] == "answered"
        ]
        return np.array([np.nan if c is None else c for c in values], dtype=np.float64)


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)
