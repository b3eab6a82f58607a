"""Router rows: from graph runs, or read off judged traces through the decision policy."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import numpy as np

from emafusion.evals.baselines import Row
from emafusion.nodes import policy
from emafusion.stores.recordings import Record
from emafusion.train.graph_runs import QueryResult
from emafusion.train.traces import decided_events


def router_row(name: str, results: Sequence[QueryResult], note: str = "") -> Row:
    correct = np.array([r.correct for r in results])
    return Row(
        name,
        "router",
        float(correct.mean()),
        1000.0 * float(np.mean([r.cost_usd for r in results])),
        float(np.mean([r.models_called for r in results])),
        float(np.mean([r.escalated for r in results])),
        statistics.median(r.overhead_ms for r in results),
        correct,
        note,
    )


def read_off_row(
    name: str,
    results: Sequence[QueryResult],
    records: Sequence[Record],
    settings: policy.PolicySettings,
) -> Row:
    """The row the graph would give under `settings`, from runs that called every planned
    level (`stop_early=False`): each query's decisions replayed through the policy."""
    correct, cost, called = [], [], []
    for result, record in zip(results, records, strict=True):
        outcome = policy.replay(policy.views_of(decided_events(result.trace)), settings)
        recorded = record.outcomes.get(outcome.model) if outcome.model else None
        correct.append(recorded.score if recorded is not None else 0.0)
        cost.append(outcome.spent_usd)
        called.append(outcome.attempts)
    calls = np.array(called)
    return Row(
        name,
        "router",
        float(np.mean(correct)),
        1000.0 * float(np.mean(cost)),
        float(calls.mean()),
        float(np.mean(calls > 1)),
        None,
        np.array(correct),
        note="read off one run's judged trace",
    )
