"""Where a memory persists: the `OutcomeStore` interface and its local-files implementation.

The memory needs two things from storage: *generations* (complete snapshots, replaced
atomically) and an *outcome log* (an ordered, append-only sequence of `LogEntry`, durable
once `append` returns, readable by position). `OutcomeStore` is that contract; a PostgreSQL
store would implement it with a table of generations (bytea blobs, one row marked current)
and a log table keyed by a bigserial position, with row locks or advisory locks in place of
the file locks below.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from .filelock import file_lock
from .generations import (
    LOCK_FILE,
    GenerationRef,
    StoredGeneration,
    read_generation,
    read_manifest,
    write_generation,
)
from .log import LOG_DIR, LogRead, OutcomeLog
from .records import LogEntry, OutcomeMemoryError


class OutcomeStore(Protocol):
    """Durable storage of one memory, shared by many processes.

    Positions are integers that only grow: ``append`` returns each entry's, a generation
    records the position its log content ends at, and ``read_since`` reads from one.
    """

    location: str

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
        self._log: OutcomeLog | None = None

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


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path.absolute()
