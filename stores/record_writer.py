"""Recording off the answer's path: the outcomes of a run are written by one background
thread, so a caller of the graph (``ainvoke``) gets its answer without waiting for the
memory write (and, with outcomes persisted, the fsynced appends to the outcome log and the
run ledger).

* One writer per `RouterResources`, one thread, jobs run in the order they were submitted;
  the queue is bounded (``capacity``): past it, a submitter waits (backpressure, off the
  event loop) instead of the backlog growing without end.
* ``flush()`` waits until every job submitted before it has run: what a reader that needs
  its own writes calls first (feedback by run id, the start of the next run, tests).
* A job that raises is logged (its text redacted: no key ever reaches a log) and counted
  (``failed``, ``last_error``); the writer goes on with the next.
* The thread starts on the first job and ends after ``idle_exit_s`` without one; at process
  exit every writer is drained (``atexit``), so nothing queued is lost on a normal exit.
* ``background=False`` runs each job in the caller's thread instead (what recording did
  before; benchmarks compare the two).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable

from emafusion.stores.redaction import redact

logger = logging.getLogger(__name__)

Job = Callable[[], None]
DEFAULT_CAPACITY = 1024
DEFAULT_IDLE_EXIT_S = 5.0
EXIT_DRAIN_TIMEOUT_S = 60.0

_live: weakref.WeakSet[RecordWriter] = weakref.WeakSet()


class RecordWriter:
    def __init__(
        self,
        *,
        background: bool = True,
        capacity: int = DEFAULT_CAPACITY,
        idle_exit_s: float = DEFAULT_IDLE_EXIT_S,
        name: str = "emafusion-record",
    ) -> None:
        self.background = background
        self.capacity = capacity
        self.idle_exit_s = idle_exit_s
        self.name = name
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=capacity)
        self._done = threading.Condition()
        self._submitted = 0  # jobs handed in (under _done)
        self._finished = 0  # jobs run, failed or not (under _done)
        self._thread: threading.Thread | None = None
        self.failed = 0
        self.last_error: str | None = None
        _live.add(self)

    # --- submitting -------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue `job` (waits while the queue is full); inline: run it now."""
        if not self.background:
            self._run(job)
            return
        with self._done:
            self._submitted += 1
        self._ensure_thread()  # a full queue always has a thread emptying it
        self._queue.put(job)
        self._ensure_thread()

    async def asubmit(self, job: Job) -> None:
        """`submit` for a coroutine: never blocks the event loop (a full queue, or an
        inline write, waits in a worker thread)."""
        if not self.background:
            await asyncio.to_thread(self._run, job)
            return
        with self._done:
            self._submitted += 1
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self._ensure_thread()
            await asyncio.to_thread(self._queue.put, job)
        self._ensure_thread()

    # --- waiting ----------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Jobs submitted and not yet run."""
        with self._done:
            return self._submitted - self._finished

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every job submitted before this call has run; False on timeout.

        Called from a job (the writer's own thread), it returns at once: the jobs before
        it have run, and waiting for itself would never end."""
        if threading.current_thread() is self._thread:
            return True
        with self._done:
            target = self._submitted
            if self._finished >= target:
                return True
        self._ensure_thread()  # a thread that ended idle while a job was being queued
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._done:
            while self._finished < target:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._done.wait(left)
        return True

    async def aflush(self) -> None:
        """`flush` for a coroutine: free when nothing is pending, else waits off the loop."""
        if self.pending:
            await asyncio.to_thread(self.flush)

    # --- the thread -------------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        with self._done:
            if self._thread is not None and self._thread.is_alive():
                return
            if self._submitted == self._finished:
                return
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            try:
                job = self._queue.get(timeout=self.idle_exit_s)
            except queue.Empty:
                with self._done:
                    # Nothing queued and none counted in flight: this thread may end (a job
                    # counted but not yet put restarts one through _ensure_thread).
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            self._run(job)

    def _run(self, job: Job) -> None:
        try:
            job()
        except Exception as exc:  # a failed write is reported, never lost silently
            with self._done:
                self.failed += 1
                failed = self.failed
                self.last_error = redact(f"{exc.__class__.__name__}: {exc}")
            logger.error(
                "recording outcomes failed (%s); %d failed write(s) so far", self.last_error, failed
            )
        finally:
            if self.background:
                with self._done:
                    self._finished += 1
                    self._done.notify_all()

    def close(self, timeout: float | None = EXIT_DRAIN_TIMEOUT_S) -> bool:
        """Run what is queued (waiting up to `timeout`); False if some is left."""
        drained = self.flush(timeout)
        if not drained:
            logger.error(
                "%d outcome write(s) still queued after %.0f s; they are lost",
                self.pending,
                timeout or 0.0,
            )
        return drained


@atexit.register
def _drain_at_exit() -> None:
    for writer in list(_live):
        if writer.pending:
            writer.close()
