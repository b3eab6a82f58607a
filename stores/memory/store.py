"""Where a memory persists: the `OutcomeStore` interface and its local-files implementation.

The memory needs two things from storage: *generations* (complete snapshots, replaced
atomically) and an *outcome log* (an ordered, append-only sequence of `LogEntry`, durable
once `append` returns, readable by position). `OutcomeStore` is that contract;
`LocalFileStore` below keeps them in a directory, `PostgresStore` (``postgres.py``) in a
database that many router replicas share.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .filelock import file_lock
from .generations import (
    LOCK_FILE,
    MANIFEST_FILE,
    GenerationRef,
    StoredGeneration,
    read_generation,
    read_manifest,
    write_generation,
)
from .log import LOG_DIR, LogRead, OutcomeLog
from .records import LogEntry, OutcomeMemoryError

LEADER_FILE = ".leader"


@dataclass(frozen=True)
class StoreHealth:
    """How a store's connection has fared (all zeros for local files).

    ``queued``: appended entries held in memory while the store is unreachable, written on
    reconnect; ``flushed``: such entries written since; ``dropped``: entries lost because the
    buffer was full (never silently: also logged); ``outages``: times the store was lost.
    """

    connected: bool = True
    queued: int = 0
    flushed: int = 0
    dropped: int = 0
    outages: int = 0
    last_error: str | None = None

    def but(self, **changes: Any) -> StoreHealth:
        return dataclasses.replace(self, **changes)


class OutcomeStore(Protocol):
    """Durable storage of one memory, shared by many processes.

    Positions are integers that only grow: ``append`` returns each entry's, a generation
    records the position its log content ends at, and ``read_since`` reads from one.
    ``location`` names the store in messages (never with credentials); ``missing_hint``
    says what is missing where nothing was saved.
    """

    location: str
    missing_hint: str

    def bind(self, embedder_id: str, dim: int) -> None:
        """Fix the embedder and dimension log entries are checked against."""

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        """Hold off every other generation writer and every reader of generations."""

    def shared(self) -> contextlib.AbstractContextManager[None]:
        """Read a generation and the log after it without a writer replacing it."""

    def current(self) -> GenerationRef | None:
        """The current generation's reference, or None when nothing was saved."""

    def read_generation(self, ref: GenerationRef) -> StoredGeneration: ...

    def write_generation(
        self,
        files: Mapping[str, bytes],
        meta: dict[str, Any],
        *,
        log_end: int,
        lineage: str,
        embedder_id: str,
    ) -> str:
        """Publish a new current generation atomically (under `exclusive`); its name."""

    def append(self, entries: Sequence[LogEntry]) -> list[int]:
        """Durably append a batch; the entries' positions. Safe from many processes."""

    def read_since(self, position: int) -> LogRead:
        """Entries at positions >= `position` and the position to read on from."""

    def seal(self, position: int) -> LogRead:
        """`read_since`, and make later appends land at or after the returned ``end``."""

    def discard_before(self, position: int) -> None:
        """Drop log content a published generation holds (positions < `position`)."""

    def restart_log(self, embedder_id: str, dim: int) -> None:
        """Set the log aside and start one for another embedder (only an empty log)."""

    def same_place(self, other: object) -> bool:
        """Whether `other` is a store of the same memory."""

    def where(self, name: str) -> Path:
        """A generation's place, for messages and return values."""

    def wait_for_change(self, timeout_s: float) -> bool:
        """Block up to `timeout_s` for news of appends by others; whether any came.

        Stores without a wake-up signal sleep and return False (callers then poll).
        """

    def flush_pending(self) -> int:
        """Write appends queued while the store was unreachable; how many were written."""

    def try_lead(self) -> bool:
        """Whether this process is (now) the one that compacts in the background."""

    def health(self) -> StoreHealth: ...


class LocalFileStore:
    """`OutcomeStore` on a local directory (generations, ``MANIFEST.json``, ``log/``).

    Locks: ``<dir>/.lock`` orders generation writers (exclusive) against loads and refreshes
    (shared); ``<dir>/log/.lock`` orders appends (exclusive) against log reads (shared).
    A generation writer takes the log lock only to seal the log, so appends go on while it
    writes the generation. Lock order is always directory lock, then log lock.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.location = str(self.directory)
        self.missing_hint = f"{MANIFEST_FILE} is missing"
        self._log: OutcomeLog | None = None
        self._leader_fd: int | None = None

    def bind(self, embedder_id: str, dim: int) -> None:
        log = self._log
        if log is None or (log.embedder_id, log.dim) != (embedder_id, dim):
            self._log = OutcomeLog(self.directory / LOG_DIR, embedder_id, dim)

    @property
    def log(self) -> OutcomeLog:
        if self._log is None:
            raise RuntimeError("LocalFileStore.bind(embedder_id, dim) must come first")
        return self._log

    def same_place(self, other: object) -> bool:
        return isinstance(other, LocalFileStore) and _resolved(other.directory) == _resolved(
            self.directory
        )

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with file_lock(self.directory / LOCK_FILE, exclusive=True):
            yield

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with file_lock(self.directory / LOCK_FILE, exclusive=False):
            yield

    def current(self) -> GenerationRef | None:
        if not self.directory.is_dir():
            return None
        return read_manifest(self.directory)

    def read_generation(self, ref: GenerationRef) -> StoredGeneration:
        return read_generation(self.directory, ref)

    def write_generation(
        self,
        files: Mapping[str, bytes],
        meta: dict[str, Any],
        *,
        log_end: int,
        lineage: str,
        embedder_id: str,
    ) -> str:
        fields = {"embedder_id": embedder_id, "log_end": log_end, "lineage": lineage}
        meta = dict(meta, log_end=log_end, lineage=lineage)
        return write_generation(self.directory, files, meta, fields).name

    def append(self, entries: Sequence[LogEntry]) -> list[int]:
        def floor() -> int:
            ref = self.current()
            if ref is None:
                raise OutcomeMemoryError(
                    f"no saved OutcomeMemory in {self.directory} to append to; save() it first"
                )
            return ref.log_end

        return self.log.append(entries, floor)

    def read_since(self, position: int) -> LogRead:
        return self.log.read_since(position)

    def seal(self, position: int) -> LogRead:
        ref = self.current()
        return self.log.seal(position, floor=0 if ref is None else ref.log_end)

    def discard_before(self, position: int) -> None:
        self.log.discard_before(position)
        for stale in self.directory.glob(f".{LOG_DIR}-replaced-*"):
            shutil.rmtree(stale, ignore_errors=True)

    def restart_log(self, embedder_id: str, dim: int) -> None:
        log_dir = self.directory / LOG_DIR
        if log_dir.exists():
            log_dir.rename(self.directory / f".{LOG_DIR}-replaced-{secrets.token_hex(4)}")
        self._log = None
        self.bind(embedder_id, dim)

    def where(self, name: str) -> Path:
        return self.directory / name

    def wait_for_change(self, timeout_s: float) -> bool:
        time.sleep(timeout_s)  # no signal between processes here: the caller polls
        return False

    def flush_pending(self) -> int:
        return 0  # appends to local files are written or raise: nothing is queued

    def try_lead(self) -> bool:
        """Leader while this store holds ``<dir>/.leader`` flocked (released at exit)."""
        if self._leader_fd is not None:
            return True
        try:
            import fcntl
        except ImportError:
            return False
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / LEADER_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._leader_fd = fd
        return True

    def health(self) -> StoreHealth:
        return StoreHealth()


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path.absolute()
