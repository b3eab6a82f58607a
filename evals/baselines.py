"""Rows of the results table and the baselines computed from recordings alone: single
models, random, oracle, the fixed agreement cascade (two cheap models, the strong one on
disagreement) and the vote of the top models.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emafusion.evals.metrics import Point
from emafusion.stores.answers import answer_key
from emafusion.stores.cost import COST_RECORDED
from emafusion.stores.pool import Pool
from emafusion.stores.providers import recorded_call_cost
from emafusion.stores.recordings import Record


@dataclass
class Row:
    name: str
    kind: str  # single | baseline | router
    accuracy: float
    cost_per_1k_usd: float
    models_called: float
    escalation_rate: float
    overhead_ms_p50: float | None
    correct: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    note: str = ""
    # (accuracy, USD per 1k) where the point was chosen (train + validation), for presets.
    selection: tuple[float, float] | None = None

    def as_json(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "kind": self.kind,
            "accuracy": round(self.accuracy, 4),
            "cost_per_1k_usd": round(self.cost_per_1k_usd, 4),
            "models_called": round(self.models_called, 3),
            "escalation_rate": round(self.escalation_rate, 4),
            "overhead_ms_p50": None
            if self.overhead_ms_p50 is None
            else round(self.overhead_ms_p50, 3),
        }
        if self.note:
            out["note"] = self.note
        if self.selection is not None:
            out["selection_accuracy"] = round(self.selection[0], 4)
            out["selection_cost_per_1k_usd"] = round(self.selection[1], 4)
        return out

    @property
    def point(self) -> Point:
        return (self.cost_per_1k_usd, self.accuracy)


@dataclass
class Matrices:
    """Per (query, model): recorded score, the call's USD, and the chosen letter."""

    records: list[Record]
    models: list[str]
    score: np.ndarray  # nan where the model has no recording
    cost: np.ndarray
    choice: list[list[str | None]]
    recorded_cost: bool

    @classmethod
    def build(cls, records: Sequence[Record], pool: Pool) -> Matrices:
        models = pool.names
        score = np.full((len(records), len(models)), np.nan)
        cost = np.full((len(records), len(models)), np.nan)
        choice: list[list[str | None]] = []
        recorded = True
        for i, record in enumerate(records):
            letters: list[str | None] = []
            for j, model in enumerate(models):
                outcome = record.outcomes.get(model)
                if outcome is None:
                    letters.append(None)
                    continue
                _, usd, source = recorded_call_cost(pool.get(model).prices, record.query, outcome)
                recorded &= source == COST_RECORDED
                score[i, j], cost[i, j] = outcome.score, usd
                letters.append(answer_key(record.query, outcome.response))
            choice.append(letters)
        return cls(list(records), models, score, cost, choice, recorded)

    def single_rows(self) -> list[Row]:
        rows = []
        for j, model in enumerate(self.models):
            # A missing recording is a provider failure: wrong, and free.
            correct = np.nan_to_num(self.score[:, j], nan=0.0)
            rows.append(
                Row(
                    model,
                    "single",
                    float(correct.mean()),
                    1000.0 * float(np.nanmean(self.cost[:, j]))
                    if np.isfinite(self.cost[:, j]).any()
                    else 0.0,
                    1.0,
                    0.0,
                    None,
                    correct,
                )
            )
        return rows

    def random_row(self) -> Row:
        correct = np.nanmean(np.nan_to_num(self.score, nan=0.0), axis=1)
        cost = np.nanmean(self.cost, axis=1)
        return Row(
            "random",
            "baseline",
            float(correct.mean()),
            1000.0 * float(cost.mean()),
            1.0,
            0.0,
            None,
            correct,
            note="expected value of a uniform pick",
        )

    def oracle_row(self) -> Row:
        correct = np.zeros(len(self.records))
        cost = np.zeros(len(self.records))
        for i in range(len(self.records)):
            right = np.flatnonzero(self.score[i] >= 0.5)
            available = np.flatnonzero(np.isfinite(self.cost[i]))
            pick = right if len(right) else available
            j = pick[np.argmin(self.cost[i, pick])]
            correct[i], cost[i] = (1.0 if len(right) else 0.0), self.cost[i, j]
        return Row(
            "oracle",
            "baseline",
            float(correct.mean()),
            1000.0 * float(cost.mean()),
            1.0,
            0.0,
            None,
            correct,
            note="cheapest correct model per query",
        )

    def disagreement(
        self, first: int, second: int, strong: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Two cheap models answer; on disagreement (or a missing answer) the strong one does."""
        correct = np.zeros(len(self.records))
        cost = np.zeros(len(self.records))
        escalated = np.zeros(len(self.records))
        for i in range(len(self.records)):
            a, b = self.choice[i][first], self.choice[i][second]
            base = np.nan_to_num(self.cost[i, [first, second]], nan=0.0).sum()
            if a is not None and a == b:
                correct[i] = np.nan_to_num(self.score[i, first], nan=0.0)
                cost[i] = base
            else:
                correct[i] = np.nan_to_num(self.score[i, strong], nan=0.0)
                cost[i] = base + np.nan_to_num(self.cost[i, strong], nan=0.0)
                escalated[i] = 1.0
        return correct, cost, escalated

    def vote(self, models: Sequence[int], order: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Every model in `models` answers; the most common answer wins, ties going to the
        answer of the model first in `order` (the most accurate first)."""
        correct = np.zeros(len(self.records))
        cost = np.nan_to_num(self.cost[:, list(models)], nan=0.0).sum(axis=1)
        rank = {j: r for r, j in enumerate(order)}
        for i in range(len(self.records)):
            votes: dict[str, list[int]] = {}
            for j in models:
                key = self.choice[i][j]
                if key is not None:
                    votes.setdefault(key, []).append(j)
            if not votes:
                continue
            winner = max(votes.values(), key=lambda js: (len(js), -min(rank[j] for j in js)))
            correct[i] = np.nan_to_num(self.score[i, min(winner, key=lambda j: rank[j])])
        return correct, cost


def choose_disagreement_pair(val: Matrices, best: int, budget_per_1k: float) -> tuple[int, int]:
    """The pair of cheaper models whose disagreement cascade is most accurate on these
    (train) queries within the best model's cost."""
    mean_cost = np.nanmean(val.cost, axis=0)
    cheaper = [j for j in range(len(val.models)) if j != best and mean_cost[j] < mean_cost[best]]
    best_pair, best_key = (cheaper[0], cheaper[1]), (-1.0, 0.0)
    for first, second in itertools.combinations(cheaper, 2):
        correct, cost, _ = val.disagreement(first, second, best)
        within = 1000.0 * cost.mean() <= budget_per_1k
        key = (float(correct.mean()) if within else -1.0, -float(cost.mean()))
        if key > best_key:
            best_pair, best_key = (first, second), key
    return best_pair


def complete(records: Sequence[Record], pool: Pool) -> list[Record]:
    """Queries every pool model has a recording of (the headline population)."""
    return [r for r in records if all(m in r.outcomes for m in pool.names)]
