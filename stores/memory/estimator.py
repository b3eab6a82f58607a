"""The in-memory state of an outcome memory: FAISS index, outcome tables, running totals.

FAISS ids are row numbers: rows are only ever appended, so row i of the index is always the
i-th stored query. Per (row, model) the ground-truth table and the judged table each hold at
most one outcome. The *effective* outcome of a cell, the one predictions and priors use, is
the ground truth when there is one, else the judged one.

Running totals (tier, metric, group, model) sum the effective outcomes: tier 0 the cells
whose effective outcome is ground truth, tier 1 those where it is judged; group 0 is every
query, group 1 + c category c. They are updated on each stored outcome so neither learning
nor prediction ever rescans the memory.

A query's category for priors is its label when it has one, else its predicted category; a
predicted category never replaces a label.

All mutations and searches hold one re-entrant lock, which makes concurrent use from
threads and asyncio tasks (via ``asyncio.to_thread``) safe.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import faiss
import numpy as np

from .records import (
    NORM_TOLERANCE,
    SOURCE_RANK,
    SOURCES,
    LogEntry,
    MemorySettings,
    OutcomeMemoryError,
    OutcomeRecord,
    StoredQuery,
)
from .tables import METRICS, OutcomeTable

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

TRUTH, JUDGED = 0, 1
TIERS = 2
# Above this many outcomes in one apply, re-summing the totals in one vectorized pass is
# cheaper than updating them outcome by outcome.
BULK_OUTCOMES = 1024
_FEEDBACK = SOURCES.index("user_feedback")


def new_index(dim: int, settings: MemorySettings) -> faiss.Index:
    if settings.index_kind == "flat":
        return faiss.IndexFlatIP(dim)
    index = faiss.IndexHNSWFlat(dim, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = settings.hnsw_ef_construction
    index.hnsw.efSearch = settings.hnsw_ef_search
    return index


class Estimator:
    def __init__(self, dim: int, embedder_id: str, settings: MemorySettings) -> None:
        self.dim = dim
        self.embedder_id = embedder_id
        self.settings = settings
        self.lock = threading.RLock()
        self.index = new_index(dim, settings)
        self.ids: list[str] = []
        self.row_of: dict[str, int] = {}
        self.models: list[str] = []
        self.col_of: dict[str, int] = {}
        self.categories: list[str] = []
        self.cat_of: dict[str, int] = {}
        self.n = 0
        self.row_label = np.full(0, -1, dtype=np.int32)
        self.row_predicted = np.full(0, -1, dtype=np.int32)
        # Ground-truth cells per row, kept as outcomes arrive: predictions skip rows with
        # none (judged only) without rescanning the whole table on every query.
        self.row_truth = np.zeros(0, dtype=np.int32)
        self.truth = OutcomeTable()
        self.judged = OutcomeTable()
        # The judged table is allocated on the first judged outcome: a memory of recordings
        # alone never pays for it, and predicts exactly as before judged outcomes existed.
        self.judged_active = False
        self.total_count = np.zeros((TIERS, METRICS, 1, 0), dtype=np.int64)
        self.total_sum = np.zeros((TIERS, METRICS, 1, 0))

    # ---------------------------------------------------------------- reading

    def row_categories(self) -> np.ndarray:
        """Each row's category code for priors (label, else predicted, else -1)."""
        n = self.n
        label, predicted = self.row_label[:n], self.row_predicted[:n]
        return np.where(label >= 0, label, predicted)

    def row_category(self, row: int) -> int:
        label = int(self.row_label[row])
        return label if label >= 0 else int(self.row_predicted[row])

    def cell_tier(self, row: int, col: int) -> int:
        """Which table holds the effective outcome of a cell (-1: neither)."""
        if self.truth.has(row, col):
            return TRUTH
        if self.judged_active and self.judged.has(row, col):
            return JUDGED
        return -1

    def stored_query(self, row: int) -> StoredQuery:
        truth, judged, effective = {}, {}, {}
        for col, model in enumerate(self.models):
            if self.truth.has(row, col):
                truth[model] = effective[model] = self.truth.record_at(row, col, model)
            if self.judged_active and self.judged.has(row, col):
                judged[model] = self.judged.record_at(row, col, model)
                effective.setdefault(model, judged[model])
        code = self.row_category(row)
        label, predicted = int(self.row_label[row]), int(self.row_predicted[row])
        return StoredQuery(
            self.ids[row],
            self.categories[code] if code >= 0 else None,
            effective,
            ground_truth=truth,
            judged=judged,
            label=self.categories[label] if label >= 0 else None,
            predicted_category=self.categories[predicted] if predicted >= 0 else None,
        )

    def vectors(self, rows: Sequence[int]) -> np.ndarray:
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        for i, row in enumerate(rows):
            out[i] = self.index.reconstruct(int(row))
        return out

    def live_entries(self) -> list[LogEntry]:
        """Every stored outcome that was not a recording, as log entries (one per query).

        These are what a rebuild from recordings cannot bring back: judged outcomes, user
        feedback, and with them the query's vector and category.
        """
        with self.lock:
            n, m = self.n, len(self.models)
            self.truth.reserve(n, m)
            feedback = self.truth.source[:n, :m] == _FEEDBACK
            live = feedback.copy()
            if self.judged_active:
                self.judged.reserve(n, m)
                live |= ~np.isnan(self.judged.score[:n, :m])
            rows = np.flatnonzero(live.any(axis=1))
            vectors = self.vectors(rows.tolist())
            entries = []
            for i, row in enumerate(rows.tolist()):
                outcomes = [
                    self.truth.record_at(row, col, self.models[col])
                    for col in np.flatnonzero(feedback[row]).tolist()
                ]
                if self.judged_active:
                    outcomes += [
                        self.judged.record_at(row, col, self.models[col])
                        for col in range(m)
                        if self.judged.has(row, col)
                    ]
                label, predicted = int(self.row_label[row]), int(self.row_predicted[row])
                code = label if label >= 0 else predicted
                entries.append(
                    LogEntry(
                        self.ids[row],
                        vectors[i],
                        tuple(outcomes),
                        self.categories[code] if code >= 0 else None,
                        category_is_label=label >= 0,
                    )
                )
            return entries

    # ---------------------------------------------------------------- validation

    def prepare_vectors(self, vectors: ArrayLike, *, what: str = "vector") -> np.ndarray:
        try:
            arr = np.array(vectors, dtype=np.float32, ndmin=2)
        except (TypeError, ValueError) as exc:
            raise OutcomeMemoryError(f"{what} must be numeric: {exc}") from exc
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            got = arr.shape[-1] if arr.ndim == 2 else arr.shape
            raise OutcomeMemoryError(
                f"{what} has dimension {got}, but this memory holds {self.dim}-d vectors of "
                f"embedder {self.embedder_id!r}; embed queries with that embedder"
            )
        finite = np.isfinite(arr).all(axis=1)
        if not finite.all():
            raise OutcomeMemoryError(
                f"{what} row {int(np.argmin(finite))} contains NaN or inf; check the embedder"
            )
        norms = np.linalg.norm(arr, axis=1)
        if (norms == 0).any():
            raise OutcomeMemoryError(
                f"{what} row {int(np.argmin(norms))} is all zeros and has no direction; "
                "check the embedder output"
            )
        off = np.abs(norms - 1.0) > NORM_TOLERANCE
        if off.any():
            if not self.settings.normalize_inputs:
                bad = int(np.argmax(off))
                raise OutcomeMemoryError(
                    f"{what} row {bad} has L2 norm {norms[bad]:.4f}, expected 1; pass "
                    "unit-length vectors (Embedder.embed returns them) or create the memory "
                    "with MemorySettings(normalize_inputs=True)"
                )
            arr[off] /= norms[off, None]
        return np.ascontiguousarray(arr)

    # ---------------------------------------------------------------- learning

    def apply(
        self,
        ids: list[str],
        vectors: np.ndarray | None,
        records: list[tuple[OutcomeRecord, ...]],
        categories: list[str | None],
        is_label: list[bool],
    ) -> int:
        """Store already validated queries and outcomes; returns the number of new ids.

        A new id takes the vector of its first occurrence; a known id keeps its vector.
        """
        with self.lock:
            new_positions: dict[str, int] = {}
            for pos, query_id in enumerate(ids):
                if query_id not in self.row_of and query_id not in new_positions:
                    new_positions[query_id] = pos
            if new_positions:
                if vectors is None:
                    raise OutcomeMemoryError(f"queries {list(new_positions)} need vectors")
                self._append_rows(list(new_positions), vectors[list(new_positions.values())])
            bulk = sum(len(recs) for recs in records) >= BULK_OUTCOMES
            for query_id, category, label, recs in zip(
                ids, categories, is_label, records, strict=True
            ):
                row = self.row_of[query_id]
                if category is not None:
                    self._set_category(row, self._category_code(category), label, not bulk)
                for record in recs:
                    self._store_outcome(row, record, account=not bulk)
            if bulk:
                self.total_count, self.total_sum = self.recomputed_totals()
            return len(new_positions)

    def _append_rows(self, query_ids: list[str], vectors: np.ndarray) -> None:
        # The index goes first: if FAISS fails nothing else has changed yet.
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        start = self.n
        self._reserve(start + len(query_ids), len(self.models))
        for offset, query_id in enumerate(query_ids):
            self.ids.append(query_id)
            self.row_of[query_id] = start + offset
        self.n = start + len(query_ids)

    def _column(self, model: str) -> int:
        col = self.col_of.get(model)
        if col is None:
            col = len(self.models)
            self._reserve(self.n, col + 1)
            self.models.append(model)
            self.col_of[model] = col
        return col

    def _store_outcome(self, row: int, record: OutcomeRecord, *, account: bool) -> None:
        col = self._column(record.model)
        if record.is_ground_truth:
            table = self.truth
            if table.has(row, col):
                old_rank = SOURCE_RANK[SOURCES[int(table.source[row, col])]]
                new_rank = SOURCE_RANK[record.source]
                if new_rank < old_rank or table.same(row, col, record):
                    return  # a recording never replaces the user's feedback on an answer
                if new_rank == old_rank and table.time[row, col] > record.timestamp:
                    return  # an older outcome (e.g. a replayed recording) must not win
            changes_effective = True
            if not table.has(row, col):
                self.row_truth[row] += 1
        else:
            self._activate_judged()
            table = self.judged
            if table.has(row, col) and (
                table.same(row, col, record) or table.time[row, col] > record.timestamp
            ):
                return
            # Stored apart; it only counts where the cell has no ground truth.
            changes_effective = not self.truth.has(row, col)
        if account and changes_effective:
            self._account(row, col, -1)
        table.put(row, col, record)
        if account and changes_effective:
            self._account(row, col, +1)

    def _activate_judged(self) -> None:
        if not self.judged_active:
            rows, cols = self.truth.capacity
            self.judged.reserve(rows, cols)
            self.judged_active = True

    def _account(self, row: int, col: int, sign: int) -> None:
        """Add (sign=1) or remove (sign=-1) a cell's effective outcome from the totals."""
        tier = self.cell_tier(row, col)
        if tier < 0:
            return
        table = self.truth if tier == TRUTH else self.judged
        code = self.row_category(row)
        groups = (0,) if code < 0 else (0, code + 1)
        for metric, values in enumerate(table.metrics()):
            value = values[row, col]
            if np.isnan(value):
                continue
            for group in groups:
                self.total_count[tier, metric, group, col] += sign
                self.total_sum[tier, metric, group, col] += sign * value

    def _set_category(self, row: int, code: int, is_label: bool, account: bool) -> None:
        target = self.row_label if is_label else self.row_predicted
        if target[row] == code:
            return
        before = self.row_category(row)
        # A predicted category only takes effect while the query has no label.
        after = code if is_label or self.row_label[row] < 0 else before
        if not account or after == before:
            target[row] = code
            return
        present = [c for c in range(len(self.models)) if self.cell_tier(row, c) >= 0]
        for col in present:
            self._account(row, col, -1)
        target[row] = code
        for col in present:
            self._account(row, col, +1)

    def _category_code(self, category: str) -> int:
        code = self.cat_of.get(category)
        if code is None:
            code = len(self.categories)
            self._reserve_totals(code + 2, self.total_count.shape[3])
            self.categories.append(category)
            self.cat_of[category] = code
        return code

    def _reserve(self, rows: int, cols: int) -> None:
        """Grow the outcome arrays geometrically so appends stay amortized O(1)."""
        self._reserve_totals(self.total_count.shape[2], cols)
        self.truth.reserve(rows, cols)
        if self.judged_active:
            self.judged.reserve(rows, cols)
        capacity = self.truth.capacity[0]
        if capacity > self.row_label.shape[0]:
            for name in ("row_label", "row_predicted"):
                old = getattr(self, name)
                new = np.full(capacity, -1, dtype=np.int32)
                new[: old.shape[0]] = old
                setattr(self, name, new)
        if capacity > self.row_truth.shape[0]:
            counts = np.zeros(capacity, dtype=np.int32)
            counts[: self.row_truth.shape[0]] = self.row_truth
            self.row_truth = counts

    def recount_row_truth(self) -> None:
        """`row_truth` from the ground-truth table (after a snapshot loads it whole)."""
        n, m = self.n, len(self.models)
        counts = np.zeros(max(self.truth.capacity[0], n), dtype=np.int32)
        counts[:n] = (~np.isnan(self.truth.score[:n, :m])).sum(axis=1)
        self.row_truth = counts

    def _reserve_totals(self, groups: int, cols: int) -> None:
        _, _, cap_groups, cap_cols = self.total_count.shape
        if groups <= cap_groups and cols <= cap_cols:
            return
        shape = (
            TIERS,
            METRICS,
            max(groups, 2 * cap_groups if groups > cap_groups else cap_groups),
            max(cols, cap_cols),
        )
        count = np.zeros(shape, dtype=np.int64)
        total = np.zeros(shape)
        count[:, :, :cap_groups, :cap_cols] = self.total_count
        total[:, :, :cap_groups, :cap_cols] = self.total_sum
        self.total_count, self.total_sum = count, total

    # ---------------------------------------------------------------- totals

    def recomputed_totals(self) -> tuple[np.ndarray, np.ndarray]:
        """Totals rebuilt from the outcome tables (bulk adds, and a cross-check on load)."""
        n, m = self.n, len(self.models)
        n_groups = len(self.categories) + 1
        self._reserve(n, m)
        # One flat bincount per metric: cell (row, col) lands in bin (category, col).
        groups = self.row_categories().astype(np.intp) + 1
        bins = (groups[:, None] * m + np.arange(m)).ravel()
        size = n_groups * m
        count = np.zeros((TIERS, METRICS, n_groups, m), dtype=np.int64)
        total = np.zeros((TIERS, METRICS, n_groups, m))
        truth_present = ~np.isnan(self.truth.score[:n, :m])
        tiers = [(TRUTH, self.truth, None)]
        if self.judged_active:
            tiers.append((JUDGED, self.judged, truth_present))
        for tier, table, hidden in tiers:
            for metric, values in enumerate(table.metrics()):
                block = values[:n, :m]
                present = ~np.isnan(block)
                if hidden is not None:
                    present &= ~hidden  # a judged outcome under ground truth counts nothing
                filled = np.where(present, block, 0.0)
                count[tier, metric] = np.bincount(bins, present.ravel(), size).reshape(n_groups, m)
                total[tier, metric] = np.bincount(bins, filled.ravel(), size).reshape(n_groups, m)
        # Group 0 is everything: the bins above only hold the uncategorised rows there.
        count[:, :, 0] = count.sum(axis=2)
        total[:, :, 0] = total.sum(axis=2)
        return count, total

    def totals_agree(self) -> bool:
        count, total = self.recomputed_totals()
        groups, m = count.shape[2], len(self.models)
        stored_count = self.total_count[:, :, :groups, :m]
        stored_total = self.total_sum[:, :, :groups, :m]
        return bool(
            np.array_equal(count, stored_count)
            and np.allclose(total, stored_total, rtol=1e-9, atol=1e-9)
        )
