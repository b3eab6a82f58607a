"""OutcomeMemory: the learned kNN router's memory (see the package docstring)."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import persistence, predictor
from .estimator import Estimator
from .follower import Follower
from .persistence import Attachment, LogReport
from .records import (
    IndexKind,
    LogEntry,
    MemorySettings,
    OutcomeMemoryError,
    OutcomeRecord,
    StoredQuery,
    check_category,
    check_query_id,
    prepare_outcomes,
)
from .results import BatchPrediction, ModelStats, Prediction
from .store import LocalFileStore, OutcomeStore

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from emafusion.stores.embeddings import Embedder

Outcomes = Iterable[OutcomeRecord | Mapping[str, Any]]


class OutcomeMemory:
    """kNN memory of query embeddings and per-model outcomes; see the package docstring.

    Thread-safe: learning and prediction hold the estimator's lock, persistence (`append`,
    `refresh`, `compact`, `save`) is serialized per memory and guarded by file locks
    against other processes.
    """

    def __init__(self, dim: int, embedder_id: str, settings: MemorySettings | None = None) -> None:
        if not isinstance(dim, int) or dim < 1:
            raise OutcomeMemoryError(f"dim must be a positive int, got {dim!r}")
        if not isinstance(embedder_id, str) or not embedder_id:
            raise OutcomeMemoryError(
                f"embedder_id must be a non-empty str (the Embedder.id), got {embedder_id!r}"
            )
        self._est = Estimator(dim, embedder_id, settings or MemorySettings())
        self._io = threading.RLock()
        self._attached: Attachment | None = None
        self._report = LogReport()
        self._follower: Follower | None = None

    @classmethod
    def for_embedder(
        cls, embedder: Embedder, settings: MemorySettings | None = None
    ) -> OutcomeMemory:
        return cls(embedder.dim, embedder.id, settings)

    @classmethod
    def _of(cls, est: Estimator) -> OutcomeMemory:
        memory = cls(est.dim, est.embedder_id, est.settings)
        memory._est = est
        return memory

    # ---------------------------------------------------------------- introspection

    @property
    def dim(self) -> int:
        return self._est.dim

    @property
    def embedder_id(self) -> str:
        return self._est.embedder_id

    def __len__(self) -> int:
        return self._est.n

    def __contains__(self, query_id: object) -> bool:
        return query_id in self._est.row_of

    @property
    def models(self) -> list[str]:
        """Every model with at least one stored outcome, in first-seen order."""
        with self._est.lock:
            return list(self._est.models)

    @property
    def categories(self) -> list[str]:
        with self._est.lock:
            return list(self._est.categories)

    @property
    def query_ids(self) -> list[str]:
        with self._est.lock:
            return list(self._est.ids)

    @property
    def settings(self) -> MemorySettings:
        """The settings in force (read-only: the index was built for them)."""
        return self._est.settings

    def weigh_judged(self, weight: float) -> None:
        """Set what one judged outcome counts next to a ground-truth one, in [0, 1]: a
        measured figure (`emafusion.stores.judged`), not part of the saved memory."""
        self._est.settings = replace(self._est.settings, judged_weight=weight)

    @property
    def index_kind(self) -> IndexKind:
        return self.settings.index_kind

    @property
    def directory(self) -> Path | None:
        """The local directory this memory was loaded from or last saved to (None: nowhere
        yet, or a store that is not a directory)."""
        store = self.store
        return store.directory if isinstance(store, LocalFileStore) else None

    @property
    def store(self) -> OutcomeStore | None:
        """Where this memory was loaded from or last saved to (None: nowhere yet)."""
        return None if self._attached is None else self._attached.store

    @property
    def location(self) -> str | None:
        """`store`'s name for messages (a directory, or a URL without its password)."""
        store = self.store
        return None if store is None else store.location

    def _position(self) -> int:
        return 0 if self._attached is None else self._attached.position

    @property
    def log_report(self) -> LogReport:
        return self._report

    def get(self, query_id: str) -> StoredQuery | None:
        with self._est.lock:
            row = self._est.row_of.get(query_id)
            return None if row is None else self._est.stored_query(row)

    def records(self) -> list[StoredQuery]:
        """All stored queries in insertion order."""
        with self._est.lock:
            return [self._est.stored_query(row) for row in range(self._est.n)]

    def vector(self, query_id: str) -> np.ndarray:
        with self._est.lock:
            row = self._est.row_of.get(query_id)
            if row is None:
                raise KeyError(query_id)
            return self._est.vectors([row])[0]

    def __repr__(self) -> str:
        return (
            f"OutcomeMemory(queries={len(self)}, models={len(self._est.models)}, "
            f"dim={self.dim}, index={self.settings.index_kind!r}, "
            f"embedder_id={self.embedder_id!r})"
        )

    # ---------------------------------------------------------------- learning

    def add(
        self,
        query_id: str,
        vector: ArrayLike | None,
        outcomes: Outcomes,
        category: str | None = None,
        *,
        category_is_label: bool = False,
    ) -> bool:
        """Store a query's outcomes in this process; searchable as soon as this returns.

        For a stored query id the outcomes are merged into it (its vector is kept, so
        ``vector`` may be None). Per (query, model) ground truth and judged outcomes are
        kept apart: a judged outcome never replaces ground truth; user feedback replaces a
        recording; otherwise the latest timestamp wins (ties to the newly added one).
        ``category`` is a label when ``category_is_label``, else a predicted category, which
        never replaces a label. Returns True when the query id was new.

        Nothing is written to disk: `append` records durably, `save` writes a generation.
        """
        entries = self._entries([query_id], vector, [outcomes], [category], category_is_label)
        return self._learn(entries, dirty=True) == 1

    def add_many(
        self,
        query_ids: Sequence[str],
        vectors: ArrayLike,
        outcomes: Sequence[Outcomes],
        categories: Sequence[str | None] | None = None,
        *,
        category_is_label: bool = False,
    ) -> int:
        """Bulk `add` with one index insertion; all-or-nothing on bad input.

        Returns the number of new query ids.
        """
        entries = self._entries(query_ids, vectors, outcomes, categories, category_is_label)
        return self._learn(entries, dirty=True)

    def append(
        self,
        query_id: str,
        vector: ArrayLike | None,
        outcomes: Outcomes,
        category: str | None = None,
        *,
        category_is_label: bool = False,
    ) -> int:
        """`add`, and record it durably in the outcome log; returns its log position.

        When this returns the outcome is on disk (fsynced) and every process that loads or
        refreshes the memory sees it. Costs one small write, not a generation.
        """
        entries = self._entries([query_id], vector, [outcomes], [category], category_is_label)
        return self._append(entries)[0]

    def append_many(
        self,
        query_ids: Sequence[str],
        vectors: ArrayLike | None,
        outcomes: Sequence[Outcomes],
        categories: Sequence[str | None] | None = None,
        *,
        category_is_label: bool = False,
    ) -> list[int]:
        """`append` for many queries as one fsynced batch; their log positions.

        ``vectors`` may be None when every query id is already stored.
        """
        entries = self._entries(query_ids, vectors, outcomes, categories, category_is_label)
        return self._append(entries)

    def _append(self, entries: list[LogEntry]) -> list[int]:
        with self._io:
            attached = self._attached
            if attached is None:
                raise OutcomeMemoryError(
                    "this memory is not saved anywhere yet, so there is no log to append to; "
                    "call save(directory) once (or load a saved memory), then append"
                )
            # A store that lost its database queues the batch (positions < 0, counted in
            # its health) and writes it on reconnect; this memory learns it either way.
            positions = attached.store.append(entries)
            attached.own.update(p for p in positions if p >= 0)
            self._learn(entries, dirty=False)
            return positions

    def _entries(
        self,
        query_ids: Sequence[str],
        vectors: ArrayLike | None,
        outcomes: Sequence[Outcomes],
        categories: Sequence[str | None] | None,
        is_label: bool,
    ) -> list[LogEntry]:
        """Validated entries (all-or-nothing); a missing vector is taken from the index."""
        if isinstance(query_ids, str):
            raise OutcomeMemoryError("query_ids must be a list of ids, not one str; use add()")
        ids = [check_query_id(q) for q in query_ids]
        n = len(ids)
        outcome_lists = list(outcomes)
        cats = [None] * n if categories is None else list(categories)
        matrix = None if vectors is None else self._est.prepare_vectors(vectors, what="vectors")
        if len(outcome_lists) != n or len(cats) != n or (matrix is not None and len(matrix) != n):
            raise OutcomeMemoryError(
                f"add_many got {n} query_ids, {len(outcome_lists)} outcome lists, "
                f"{len(cats)} categories and "
                f"{'no' if matrix is None else len(matrix)} vectors; pass one of each per query"
            )
        checked = [check_category(c) for c in cats]
        records = [prepare_outcomes(o, q) for o, q in zip(outcome_lists, ids, strict=True)]
        if matrix is None:
            with self._est.lock:
                missing = [q for q in ids if q not in self._est.row_of]
                if missing:
                    raise OutcomeMemoryError(
                        f"query {missing[0]!r} is not in the memory yet; pass its vector"
                    )
                matrix = self._est.vectors([self._est.row_of[q] for q in ids])
        return [
            LogEntry(q, matrix[i], records[i], checked[i], category_is_label=is_label)
            for i, q in enumerate(ids)
        ]

    def _learn(self, entries: Sequence[LogEntry], *, dirty: bool) -> int:
        if not entries:
            return 0
        vectors = np.stack([e.vector for e in entries])
        new = self._est.apply(
            [e.query_id for e in entries],
            vectors,
            [e.outcomes for e in entries],
            [e.category for e in entries],
            [e.category_is_label for e in entries],
        )
        if dirty and self._attached is not None:
            self._attached.dirty = True
        return new

    # ---------------------------------------------------------------- statistics

    def model_stats(self, category: str | None = None) -> dict[str, ModelStats]:
        """Count, mean score, mean cost and latency per model (optionally in one category).

        Models without a counted outcome in that scope are left out.
        """
        return predictor.model_stats(self._est, category)

    # ---------------------------------------------------------------- prediction

    def predict(
        self,
        query_vector: ArrayLike,
        models: Sequence[str] | None = None,
        k: int | None = None,
        category: str | None = None,
        *,
        now: float | None = None,
        exclude_id: str | None = None,
    ) -> dict[str, Prediction]:
        """Per-model `Prediction` for one query (``models=None``: every known model).

        ``exclude_id`` leaves that stored query out of the neighbours (leave-one-out scoring
        of a query that is already in the memory). ``now`` (unix seconds) anchors time decay.
        """
        vectors = self._est.prepare_vectors(query_vector, what="query_vector")
        if len(vectors) != 1:
            raise OutcomeMemoryError(
                f"predict takes one query vector, got {len(vectors)}; use predict_batch"
            )
        excluded = None if exclude_id is None else [exclude_id]
        return self.predict_batch(vectors, models, k, [category], now=now, exclude_ids=excluded)[0]

    def predict_batch(
        self,
        vectors: ArrayLike,
        models: Sequence[str] | None = None,
        k: int | None = None,
        categories: Sequence[str | None] | None = None,
        *,
        now: float | None = None,
        exclude_ids: Sequence[str | None] | None = None,
    ) -> list[dict[str, Prediction]]:
        """`predict` for many queries with one FAISS search per block of queries."""
        est = self._est
        batch = predictor.predict_arrays(
            est, vectors, models, k, categories, now=now, exclude_ids=exclude_ids
        )
        with est.lock:
            ids = est.ids  # append-only: rows seen by the search stay valid
        return [predictor.predictions_for(batch, b, ids) for b in range(batch.p_success.shape[0])]

    def predict_arrays(
        self,
        vectors: ArrayLike,
        models: Sequence[str] | None = None,
        k: int | None = None,
        categories: Sequence[str | None] | None = None,
        *,
        now: float | None = None,
        exclude_ids: Sequence[str | None] | None = None,
    ) -> BatchPrediction:
        """`predict_batch` as arrays, without building per-model objects."""
        return predictor.predict_arrays(
            self._est, vectors, models, k, categories, now=now, exclude_ids=exclude_ids
        )

    # ---------------------------------------------------------------- persistence

    @classmethod
    def load(
        cls,
        directory: str | Path | OutcomeStore,
        expected_embedder_id: str | None = None,
        *,
        settings: MemorySettings | None = None,
    ) -> OutcomeMemory:
        """Load the current generation of a saved memory and replay the log after it.

        ``directory`` is a local directory or an `OutcomeStore` (e.g. a `PostgresStore`).

        Raises `OutcomeMemoryError` when nothing was saved there, a file is missing,
        truncated or corrupt, the format is newer than this code, or the memory was built by
        another embedder than ``expected_embedder_id``. A torn or corrupt log record is
        dropped and counted in `log_report`. ``settings`` replaces the saved prediction
        settings; its ``index_kind`` must match the saved index.
        """
        return persistence.load(cls, directory, expected_embedder_id, settings)

    def refresh(self) -> int:
        """Apply what other processes appended since this memory last read the log.

        Tails the log from this memory's position. When another process replaced the
        generation with content this memory has not seen (it compacted past this memory's
        position, or rebuilt the memory), the memory is reloaded instead, which drops its
        in-memory `add`s (appended outcomes are in the log and stay). Returns the number of
        log entries applied (after a reload: those replayed on the new generation). Waits
        while another process writes a generation.
        """
        return persistence.refresh(self)

    def compact(self) -> Path:
        """Write a new generation holding the current one and the whole log, then drop the
        log segments it holds; returns the generation's directory.

        Runs under the directory lock and merges what every process appended (appends go on
        meanwhile and land after it). A crash at any point loses nothing: until the manifest
        names the new generation, the old one and the log are still there. In-memory `add`s
        of this process are not written (use `save` for those).
        """
        return persistence.compact(self)

    def save(self, directory: str | Path | OutcomeStore) -> Path:
        """Write this memory as a new generation of `directory`; returns its directory.

        Never discards what others recorded there: log entries this memory has not seen
        are merged in first, and over a memory this one was not loaded from (a rebuild,
        e.g. from recordings) its live outcomes (judged and user feedback) are merged too,
        while its recordings are replaced by this memory's. Saving over live outcomes of
        another embedder is refused. Concurrent `add` calls may continue during the writes.
        Afterwards the memory is attached to `directory` (`append` writes to its log).
        """
        return persistence.save(self, directory)

    def follow(self, interval_s: float = 1.0, *, compact_every_s: float | None = None) -> Follower:
        """Tail the store in a background thread until `stop_following` (see `Follower`).

        What other processes append becomes searchable here within ``interval_s`` plus one
        refresh (sooner where the store wakes followers, as PostgreSQL's NOTIFY does). With
        ``compact_every_s`` the one replica elected by the store also compacts the log.
        Calling it again while a follower runs returns that follower.
        """
        attached = persistence.require_attached(self, "follow")
        with self._io:
            if self._follower is None or not self._follower.running:
                self._follower = Follower(self, attached.store, interval_s, compact_every_s)
            return self._follower

    def stop_following(self) -> None:
        follower, self._follower = self._follower, None
        if follower is not None:
            follower.stop()
