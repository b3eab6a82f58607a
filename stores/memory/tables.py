"""Outcome arrays: per (stored query row, model column) one outcome of one kind.

The memory holds two `OutcomeTable`s, ground truth and judged, so that a judged outcome can
never take the place of a ground-truth one. Arrays grow geometrically (appends amortized
O(1)); NaN marks an absent value (an absent outcome has a NaN score).
"""

from __future__ import annotations

import numpy as np

from .records import SOURCES, OutcomeRecord

FIELDS = ("score", "cost_usd", "latency_s", "timestamp", "source")
# Running totals are kept per metric: index 0 score, 1 cost_usd, 2 latency_s.
SCORE, COST, LATENCY = range(3)
METRICS = 3


class OutcomeTable:
    def __init__(self) -> None:
        self.score = np.full((0, 0), np.nan)
        self.cost = np.full((0, 0), np.nan)
        self.latency = np.full((0, 0), np.nan)
        self.time = np.full((0, 0), np.nan)
        self.source = np.full((0, 0), -1, dtype=np.int8)

    @property
    def capacity(self) -> tuple[int, int]:
        rows, cols = self.score.shape
        return rows, cols

    def metrics(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The arrays running totals are kept of, in SCORE, COST, LATENCY order."""
        return self.score, self.cost, self.latency

    def reserve(self, rows: int, cols: int) -> None:
        cap_rows, cap_cols = self.capacity
        if rows <= cap_rows and cols <= cap_cols:
            return
        new_rows = max(rows, cap_rows * 2 if rows > cap_rows else cap_rows, 64)
        new_cols = max(cols, cap_cols * 2 if cols > cap_cols else cap_cols, 4)

        def grown(old: np.ndarray, fill: float) -> np.ndarray:
            new = np.full((new_rows, new_cols), fill, dtype=old.dtype)
            new[: old.shape[0], : old.shape[1]] = old
            return new

        self.score = grown(self.score, np.nan)
        self.cost = grown(self.cost, np.nan)
        self.latency = grown(self.latency, np.nan)
        self.time = grown(self.time, np.nan)
        self.source = grown(self.source, -1)

    def has(self, row: int, col: int) -> bool:
        rows, cols = self.capacity
        return row < rows and col < cols and not np.isnan(self.score[row, col])

    def same(self, row: int, col: int, record: OutcomeRecord) -> bool:
        """Whether the stored outcome is exactly `record` (re-adding it changes nothing)."""

        def equal(stored: float, value: float | None) -> bool:
            return np.isnan(stored) if value is None else bool(stored == value)

        return (
            equal(self.score[row, col], record.score)
            and equal(self.cost[row, col], record.cost_usd)
            and equal(self.latency[row, col], record.latency_s)
            and equal(self.time[row, col], record.timestamp)
            and int(self.source[row, col]) == SOURCES.index(record.source)
        )

    def put(self, row: int, col: int, record: OutcomeRecord) -> None:
        self.score[row, col] = record.score
        self.cost[row, col] = np.nan if record.cost_usd is None else record.cost_usd
        self.latency[row, col] = np.nan if record.latency_s is None else record.latency_s
        self.time[row, col] = record.timestamp
        self.source[row, col] = SOURCES.index(record.source)

    def record_at(self, row: int, col: int, model: str) -> OutcomeRecord:
        cost = self.cost[row, col]
        latency = self.latency[row, col]
        return OutcomeRecord(
            model=model,
            score=float(self.score[row, col]),
            source=SOURCES[int(self.source[row, col])],
            cost_usd=None if np.isnan(cost) else float(cost),
            latency_s=None if np.isnan(latency) else float(latency),
            timestamp=float(self.time[row, col]),
        )

    def block(self, rows: int, cols: int) -> dict[str, np.ndarray]:
        """Copies of the used part, keyed by `FIELDS` (what a generation stores)."""
        self.reserve(rows, cols)
        arrays = (self.score, self.cost, self.latency, self.time, self.source)
        return {name: a[:rows, :cols].copy() for name, a in zip(FIELDS, arrays, strict=True)}

    def load_block(self, data: dict[str, np.ndarray]) -> None:
        self.score = data["score"].astype(np.float64)
        self.cost = data["cost_usd"].astype(np.float64)
        self.latency = data["latency_s"].astype(np.float64)
        self.time = data["timestamp"].astype(np.float64)
        self.source = data["source"].astype(np.int8)
