"""Follower: a background thread that keeps one memory tailing its store.

Each turn it waits for news of appends (`OutcomeStore.wait_for_change`: a NOTIFY from
PostgreSQL, or just the interval for local files), writes any appends its store queued
during an outage, and calls `OutcomeMemory.refresh`. Optionally, the replica that wins the
store's leader election (`try_lead`) compacts the log every ``compact_every_s`` seconds when
it has grown.

Lag bound: an outcome another replica appended is searchable here at most ``interval_s``
plus one refresh after it committed, even when a NOTIFY is lost or the store has none (the
wait times out and the turn polls); with NOTIFY it is typically the refresh time alone. While
the store is unreachable the memory keeps answering from its index, the turn's error is
counted, and the next turn (after ``interval_s``) tries again.

The thread holds the memory weakly: a memory nobody else holds ends its follower.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .outcome_memory import OutcomeMemory
    from .store import OutcomeStore

logger = logging.getLogger(__name__)
WAIT_SLICE_S = 0.25  # how long `stop` may wait for the thread


@dataclass
class FollowerStats:
    turns: int = 0
    applied: int = 0  # log entries other processes appended, applied here
    flushed: int = 0  # queued appends written after an outage
    compactions: int = 0
    errors: int = 0
    last_error: str | None = None
    last_refresh: float | None = None  # time.time() of the last successful refresh
    leader: bool = False  # elected to compact (only asked with compact_every_s)


class Follower:
    """Tails `memory`'s store until `stop` (see the module docstring)."""

    def __init__(
        self,
        memory: OutcomeMemory,
        store: OutcomeStore,
        interval_s: float = 1.0,
        compact_every_s: float | None = None,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s!r}")
        if compact_every_s is not None and not compact_every_s > 0:
            raise ValueError(f"compact_every_s must be > 0 or None, got {compact_every_s!r}")
        self.interval_s = interval_s
        self.compact_every_s = compact_every_s
        self.stats = FollowerStats()
        self._memory = weakref.ref(memory)
        self._store = store
        self._stopped = threading.Event()
        self._compacted_at = time.monotonic()
        self._compacted_position = memory._position()
        self._thread = threading.Thread(target=self._run, name="emafusion-follow", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop after the current wait slice or turn."""
        self._stopped.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(self.interval_s + 5.0 if timeout_s is None else timeout_s)

    def _run(self) -> None:
        failing = False
        while not self._stopped.is_set():
            self._wait()
            memory = self._memory()
            if memory is None or self._stopped.is_set():
                return
            try:
                self._turn(memory)
            except Exception as exc:  # noqa: BLE001 - a follower outlives bad turns
                self.stats.errors += 1
                self.stats.last_error = str(exc)
                if not failing:
                    logger.warning("following %s failed: %s; retrying", memory.location, exc)
                failing = True
                self._stopped.wait(self.interval_s)
            else:
                if failing:
                    logger.warning("following %s again", memory.location)
                failing = False
            finally:
                del memory

    def _wait(self) -> None:
        """Until news of an append or ``interval_s``, in slices so that `stop` is prompt."""
        deadline = time.monotonic() + self.interval_s
        while not self._stopped.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or self._store.wait_for_change(min(left, WAIT_SLICE_S)):
                return

    def _turn(self, memory: OutcomeMemory) -> None:
        self.stats.turns += 1
        self.stats.flushed += self._store.flush_pending()
        self.stats.applied += memory.refresh()
        self.stats.last_refresh = time.time()
        if self.compact_every_s is None:
            return
        now = time.monotonic()
        position = memory._position()
        self.stats.leader = self._store.try_lead()  # only this thread uses its session
        due = now - self._compacted_at >= self.compact_every_s
        if due and position > self._compacted_position and self.stats.leader:
            memory.compact()
            self.stats.compactions += 1
            self._compacted_at, self._compacted_position = now, memory._position()
