"""A model's reliability on a query before its answer is read: its accuracy by category in
the memory (shrunk toward its overall accuracy), mixed by the classifier's category
probabilities. The weight of its vote when answers are fused (`policy.fuse`).

The same table serves the graph (from the router's memory) and training (from the folds of
a cross-fitting), so both weigh votes alike.

Beside it, `memory_success`: the memory's kNN P(success) of each model on this very query
(its nearest stored queries, shrunk toward the category prior), a feature of the fused
confidence. Training computes it leave-one-out (`train.fusion_traces.loo_memory_success`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from emafusion.stores.memory import OutcomeMemory

# Without any record of a model: a coin's worth of trust.
UNKNOWN = 0.5


@dataclass(frozen=True)
class ReliabilityTable:
    overall: Mapping[str, float]
    by_category: Mapping[str, Mapping[str, float]]

    def of(self, model: str, category_probs: Mapping[str, float]) -> float:
        base = self.overall.get(model, UNKNOWN)
        total = mass = 0.0
        for category, p in category_probs.items():
            if p <= 0:
                continue
            total += p * self.by_category.get(category, {}).get(model, base)
            mass += p
        return total / mass if mass > 0 else base


def table_from_counts(
    overall: Mapping[str, tuple[float, float]],
    by_category: Mapping[str, Mapping[str, tuple[float, float]]],
    smoothing: float,
) -> ReliabilityTable:
    """From (right, seen) counts: per-category accuracy shrunk toward the overall one."""
    means = {m: (right / seen if seen else UNKNOWN) for m, (right, seen) in overall.items()}
    shrunk = {
        category: {
            m: (right + smoothing * means.get(m, UNKNOWN)) / (seen + smoothing)
            for m, (right, seen) in counts.items()
            if seen + smoothing > 0
        }
        for category, counts in by_category.items()
    }
    return ReliabilityTable(means, shrunk)


def table_from_memory(
    memory: OutcomeMemory, categories: Iterable[str], smoothing: float
) -> ReliabilityTable:
    def counts(category: str | None) -> dict[str, tuple[float, float]]:
        return {
            m: (s.mean_score * s.count, float(s.count))
            for m, s in memory.model_stats(category).items()
        }

    return table_from_counts(counts(None), {c: counts(c) for c in categories}, smoothing)


def reliabilities(
    table: ReliabilityTable, models: Sequence[str], category_probs: Mapping[str, float]
) -> dict[str, float]:
    return {m: table.of(m, category_probs) for m in models}


def memory_success(
    memory: OutcomeMemory,
    vector: Sequence[float] | np.ndarray,
    models: Sequence[str],
    k: int,
    category: str | None,
) -> dict[str, float]:
    """The memory's kNN P(success) of each model on the query embedded as `vector` (the
    routing vector classify made), with `category` the run's confident category (None:
    the overall prior), as `predict` would ask it. Callers that must agree to the last bit
    (the graph and the training traces) ask for the same `models`: the sums over
    neighbours are ordered by how many models are asked."""
    if not models:
        return {}
    predictions = memory.predict(
        np.asarray(vector, dtype=np.float32), list(models), k=k, category=category
    )
    return {m: float(predictions[m].p_success) for m in models}
