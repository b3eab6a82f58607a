"""Feedback: a user's score for an answer becomes ground truth in the memory.

`submit_feedback` takes the run id a run's output names (or a query id the memory holds),
the score in [0, 1] and the model (default: the one whose answer was returned), and stores
it as a `user_feedback` outcome: ground truth that no judged outcome ever overwrites. With
the deployment persisting outcomes it is appended to the shared outcome log.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from emafusion.nodes.resources import RouterResources
from emafusion.stores.memory import OutcomeRecord
from emafusion.stores.run_ledger import RunEntry


class FeedbackError(ValueError):
    """Feedback that cannot be stored; the message says why and the fix."""


@dataclass(frozen=True)
class FeedbackReceipt:
    query_id: str
    model: str
    score: float
    durable: bool  # appended to the outcome log on disk


def submit_feedback(
    resources: RouterResources,
    run_id: str | None = None,
    score: float | None = None,
    model: str | None = None,
    *,
    query_id: str | None = None,
) -> FeedbackReceipt:
    if (run_id is None) == (query_id is None):
        raise FeedbackError("feedback names a run_id or a query_id (exactly one)")
    if score is None or not isinstance(score, int | float) or not math.isfinite(score):
        raise FeedbackError(f"score must be a finite number in [0, 1], got {score!r}")
    if not 0.0 <= float(score) <= 1.0:
        raise FeedbackError(f"score must be in [0, 1] (1 = right), got {score}")
    # Runs record in the background: the run (and its outcomes) may not be written yet.
    resources.flush_records()
    memory = resources.memory
    vector: np.ndarray | None
    category: str | None = None
    entry: RunEntry | None = None
    if run_id is not None:
        entry = resources.runs.get(run_id)
        if entry is None:
            raise FeedbackError(
                f"unknown run_id {run_id!r}: not one of this router's recent runs. Fix: send the "
                f"run_id a reply named (runs are kept while the server runs, and on disk when "
                f"the deployment persists outcomes)."
            )
        target, vector, category = (
            entry.query_id,
            np.asarray(entry.vector, np.float32),
            entry.category,
        )
        model = model or entry.model
        if model is None:
            raise FeedbackError(f"run {run_id!r} returned no answer; name the model it is for")
        if model not in entry.models:
            raise FeedbackError(
                f"model {model!r} did not answer run {run_id!r}; it was answered by "
                f"{', '.join(entry.models) or 'no model'}"
            )
    else:
        assert query_id is not None
        if query_id not in memory:
            raise FeedbackError(
                f"unknown query_id {query_id!r}: the memory holds no such query. Fix: send "
                f"the run_id of the run instead."
            )
        if model is None:
            raise FeedbackError("feedback by query_id needs the model it is for")
        target, vector = query_id, None
    if model not in resources.pool.names:
        raise FeedbackError(
            f"model {model!r} is not in the pool ({', '.join(resources.pool.names)})"
        )
    outcome = OutcomeRecord(model=model, score=float(score), source="user_feedback")
    durable = resources.persist_outcomes and memory.location is not None
    if durable:
        # A negative position: queued while the shared store is unreachable, not yet durable.
        durable = memory.append(target, vector, [outcome], category) >= 0
    else:
        memory.add(target, vector, [outcome], category)
    if entry is not None:
        for name, predicted, offset in entry.predicted:
            if name == model:  # the memory's own prediction: the offset taken back out
                resources.drift.observe(
                    model, float(score), predicted - offset, tested=entry.tested
                )
    return FeedbackReceipt(target, model, float(score), durable)
