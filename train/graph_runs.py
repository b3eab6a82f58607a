"""Running the real compiled router over recorded queries, concurrently.

The building block of every evaluation: each query goes through `graph.ainvoke` with a
`Context`, exactly as a user's query would; correctness is read afterwards from the
recording of the model the router returned.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from langgraph.graph.state import CompiledStateGraph

from emafusion.graph.context import Context
from emafusion.stores.recordings import Record


@dataclass(frozen=True)
class QueryResult:
    record_id: str
    model: str | None
    correct: float  # recorded score of the returned model's answer; 0 when none answered
    cost_usd: float
    models_called: int
    escalated: bool
    overhead_ms: float
    confidence: float | None
    path: tuple[str, ...]
    trace: tuple[dict[str, Any], ...] = field(default=(), compare=False, repr=False)


def score_result(record: Record, output: dict[str, Any], keep_trace: bool = False) -> QueryResult:
    model = output.get("model")
    outcome = record.outcomes.get(model) if model else None
    path = tuple(output.get("escalation_path", []))
    return QueryResult(
        record_id=record.id,
        model=model,
        correct=outcome.score if outcome is not None else 0.0,
        cost_usd=float(output.get("cost_usd", 0.0)),
        models_called=len(path),
        # Escalated: called past the first stage (a stage may call several models at once).
        escalated=sum(1 for e in output.get("trace", []) if e["event"] == "decided") > 1,
        overhead_ms=float(output.get("overhead_ms", 0.0)),
        confidence=output.get("confidence"),
        path=path,
        trace=tuple(output.get("trace", [])) if keep_trace else (),
    )


async def run_graph(
    graph: CompiledStateGraph,
    records: Sequence[Record],
    context: Context,
    concurrency: int = 8,
    progress: Callable[[int], None] | None = None,
    keep_trace: bool = False,
) -> list[QueryResult]:
    """Route every record through the compiled graph; results in the records' order."""
    semaphore = asyncio.Semaphore(max(1, concurrency))

    async def one(record: Record) -> QueryResult:
        async with semaphore:
            output = await graph.ainvoke(
                {"query": record.query, "record_id": record.id}, context=context
            )
        if progress is not None:
            progress(1)
        return score_result(record, output, keep_trace)

    return list(await asyncio.gather(*(one(r) for r in records)))
