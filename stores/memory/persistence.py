"""Loading, saving, compacting and refreshing an `OutcomeMemory` through its store.

A memory that was loaded from or saved to a directory is *attached* to it: it knows the
generation it started from, the lineage of that generation and the log position it has read
to. Those three decide what each operation must merge:

- ``load``: the current generation, then every log entry from its ``log_end``.
- ``refresh``: the log from the memory's position. If the generation changed meanwhile and
  the new one is a compaction of what this memory has read (same lineage, ``log_end`` not
  past the memory's position), tailing just goes on; otherwise the memory reloads.
- ``compact``: current generation + every log entry, written as a new generation under the
  directory lock (this memory itself is the base when it is exactly that state).
- ``save``: this memory + what others appended since it read the log; over a memory it was
  not loaded from (a rebuild), also that memory's live outcomes.

Each generation write seals the log first (later appends land after its ``log_end``) and
only trims log segments once the new manifest is published, so a crash never loses an
acknowledged append.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import snapshot
from .estimator import Estimator
from .generations import GenerationRef, check_embedder, damaged
from .log import LogRead
from .records import LogEntry, MemorySettings, OutcomeMemoryError
from .store import LocalFileStore, OutcomeStore

if TYPE_CHECKING:
    from .outcome_memory import OutcomeMemory


@dataclass(frozen=True)
class LogReport:
    """What loading and refreshing found in the outcome log.

    ``replayed``: entries applied on top of the generation. ``dropped``: torn or corrupt
    records skipped (a writer killed mid-append leaves one), ``dropped_bytes`` their size,
    ``damaged_files`` where they were. ``dropped_before``: records dropped by earlier
    compactions, whose files are gone.
    """

    replayed: int = 0
    dropped: int = 0
    dropped_bytes: int = 0
    damaged_files: tuple[str, ...] = ()
    dropped_before: int = 0

    def plus(self, read: LogRead, replayed: int) -> LogReport:
        files = tuple(dict.fromkeys((*self.damaged_files, *read.damaged)))
        return LogReport(
            self.replayed + replayed,
            self.dropped + read.dropped,
            self.dropped_bytes + read.dropped_bytes,
            files,
            self.dropped_before,
        )


@dataclass
class Attachment:
    """The store a memory was loaded from or saved to, and how far it has read it."""

    store: OutcomeStore
    generation: str
    lineage: str
    position: int
    dropped_before: int
    dirty: bool = False  # in-memory adds since, which are in no generation or log
    dropped_seen: int = 0  # torn or corrupt records read after the generation's log_end
    own: set[int] = field(default_factory=set)  # positions of entries this memory appended


def as_store(target: str | Path | OutcomeStore) -> OutcomeStore:
    """A directory is a `LocalFileStore`; anything else is a store already."""
    return LocalFileStore(target) if isinstance(target, str | Path) else target


def load(
    cls: type[OutcomeMemory],
    target: str | Path | OutcomeStore,
    expected_embedder_id: str | None,
    settings: MemorySettings | None,
) -> OutcomeMemory:
    store = as_store(target)
    current(store)  # a clear error before any lock is taken where nothing was saved
    with store.shared():
        ref = current(store)
        check_embedder(ref.embedder_id, expected_embedder_id, store.location)
        est, meta = decode(store, ref, settings)
        check_embedder(est.embedder_id, expected_embedder_id, store.location)
        store.bind(est.embedder_id, est.dim)
        read = store.read_since(ref.log_end)
    memory = cls._of(est)
    attach(memory, store, ref.name, ref.lineage, read.end, int(meta.get("log_dropped", 0)))
    memory._learn([e for _, e in read.entries], dirty=False)
    seen(memory, read, len(read.entries))
    return memory


def refresh(memory: OutcomeMemory) -> int:
    with memory._io:
        attached = require_attached(memory, "refresh")
        store = attached.store
        with store.shared():
            ref = current(store)
            if ref.name != attached.generation:
                if ref.lineage != attached.lineage or ref.log_end > attached.position:
                    est, meta = decode(store, ref, memory.settings)
                    read = store.read_since(ref.log_end)
                    memory._est = est
                    dropped = int(meta.get("log_dropped", 0))
                    attach(memory, store, ref.name, ref.lineage, read.end, dropped)
                    memory._learn([e for _, e in read.entries], dirty=False)
                    seen(memory, read, len(read.entries))
                    return len(read.entries)
                attached.generation = ref.name  # a compaction of what this memory has read
            read = store.read_since(attached.position)
        entries = unseen(memory, read)
        memory._learn(entries, dirty=False)
        attached.position = max(attached.position, read.end)
        seen(memory, read, len(entries))
        return len(entries)


def compact(memory: OutcomeMemory) -> Path:
    with memory._io:
        attached = require_attached(memory, "compact")
        store = attached.store
        with store.exclusive():
            ref = current(store)
            in_sync = ref.name == attached.generation
            if in_sync and not attached.dirty:
                base, position = memory._est, attached.position
                dropped = attached.dropped_before + attached.dropped_seen
            else:
                base, meta = decode(store, ref, memory.settings)
                position, dropped = ref.log_end, int(meta.get("log_dropped", 0))
            store.bind(base.embedder_id, base.dim)
            read = store.seal(position)
            if base is memory._est:
                memory._learn(unseen(memory, read), dirty=False)
            else:
                apply(base, [e for _, e in read.entries])
                if in_sync:  # keep this memory's in-memory adds, catch up on the log
                    later = [(p, e) for p, e in read.entries if p >= attached.position]
                    memory._learn(unseen(memory, LogRead(later)), dirty=False)
            dropped += read.dropped
            files, meta = snapshot.encode(base, {"log_dropped": dropped})
            name = store.write_generation(
                files, meta, log_end=read.end, lineage=ref.lineage, embedder_id=base.embedder_id
            )
            store.discard_before(read.end)
            dirty = attached.dirty and in_sync
            if not in_sync:
                memory._est = base
            attach(memory, store, name, ref.lineage, read.end, dropped, dirty=dirty)
            memory._report = LogReport(dropped_before=dropped)
        return store.where(name)


def save(memory: OutcomeMemory, target: str | Path | OutcomeStore) -> Path:
    store = as_store(target)
    with memory._io, store.exclusive():
        ref = store.current()
        attached = memory._attached
        in_sync = (
            attached is not None
            and ref is not None
            and attached.store.same_place(store)
            and attached.generation == ref.name
        )
        lineage = secrets.token_hex(8)  # new content, unless it is exactly old + log
        dropped = 0
        if ref is None:
            store.bind(memory.embedder_id, memory.dim)
            read = store.seal(0)
            memory._learn([e for _, e in read.entries], dirty=False)
        elif in_sync and attached is not None:
            store.bind(memory.embedder_id, memory.dim)
            read = store.seal(attached.position)
            memory._learn(unseen(memory, read), dirty=False)
            lineage = ref.lineage if not attached.dirty else lineage
            dropped = attached.dropped_before + attached.dropped_seen
        else:
            read, dropped = merge_live(memory, store, ref)
        dropped += read.dropped
        files, meta = snapshot.encode(memory._est, {"log_dropped": dropped})
        name = store.write_generation(
            files, meta, log_end=read.end, lineage=lineage, embedder_id=memory.embedder_id
        )
        store.discard_before(read.end)
        attach(memory, store, name, lineage, read.end, dropped)
        memory._report = LogReport(dropped_before=dropped)
    return store.where(name)


def merge_live(
    memory: OutcomeMemory, store: OutcomeStore, ref: GenerationRef
) -> tuple[LogRead, int]:
    """Merge the live outcomes and the unreplayed log of the memory in `store` into
    `memory` (which replaces it); the log read, sealed where the new generation starts."""
    try:
        other, meta = decode(store, ref, None)
    except OutcomeMemoryError as exc:
        raise OutcomeMemoryError(
            f"cannot replace the memory in {store.location} without reading its live "
            f"outcomes first: {exc}. Move {store.location} aside (its log holds the "
            "appended outcomes) and save again"
        ) from exc
    live = other.live_entries()
    store.bind(other.embedder_id, other.dim)
    read = store.seal(ref.log_end)
    entries = live + [e for _, e in read.entries]
    foreign = (other.embedder_id, other.dim) != (memory.embedder_id, memory.dim)
    if foreign and entries:
        raise OutcomeMemoryError(
            f"{store.location} holds {len(entries)} live outcome entries of embedder "
            f"{other.embedder_id!r} ({other.dim}-d); saving this memory of embedder "
            f"{memory.embedder_id!r} ({memory.dim}-d) over it would discard them. Save to "
            "another directory, or move that one aside first if its outcomes may go"
        )
    if foreign:
        # Its (empty) log is of the other embedder: set it aside, start one of ours.
        store.restart_log(memory.embedder_id, memory.dim)
        read = store.seal(read.end)
    memory._learn(entries, dirty=False)
    return read, int(meta.get("log_dropped", 0))


def attach(
    memory: OutcomeMemory,
    store: OutcomeStore,
    generation: str,
    lineage: str,
    position: int,
    dropped_before: int,
    *,
    dirty: bool = False,
) -> None:
    memory._attached = Attachment(store, generation, lineage, position, dropped_before, dirty)
    report = memory._report
    memory._report = LogReport(
        report.replayed, report.dropped, report.dropped_bytes, report.damaged_files, dropped_before
    )


def seen(memory: OutcomeMemory, read: LogRead, replayed: int) -> None:
    """Count what a read of the log after the generation applied and dropped."""
    if memory._attached is not None:
        memory._attached.dropped_seen += read.dropped
    memory._report = memory._report.plus(read, replayed)


def require_attached(memory: OutcomeMemory, what: str) -> Attachment:
    if memory._attached is None:
        raise OutcomeMemoryError(
            f"{what}() needs a saved memory: call save(directory) once, or load one"
        )
    return memory._attached


def unseen(memory: OutcomeMemory, read: LogRead) -> list[LogEntry]:
    """The entries of a read that this memory did not append itself."""
    attached = memory._attached
    own = attached.own if attached is not None else set()
    out = []
    for position, entry in read.entries:
        if position in own:
            own.discard(position)
        else:
            out.append(entry)
    return out


def current(store: OutcomeStore) -> GenerationRef:
    ref = store.current()
    if ref is None:
        raise OutcomeMemoryError(
            f"no saved OutcomeMemory in {store.location} ({store.missing_hint}); "
            "build one and call save() first"
        )
    return ref


def decode(
    store: OutcomeStore, ref: GenerationRef, settings: MemorySettings | None
) -> tuple[Estimator, dict[str, Any]]:
    stored = store.read_generation(ref)
    try:
        return snapshot.decode(stored.meta, stored.blobs, stored.where, settings), stored.meta
    except OutcomeMemoryError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # FAISS raises these
        raise damaged(stored.where, exc) from exc


def apply(est: Estimator, entries: Sequence[LogEntry]) -> None:
    if entries:
        est.apply(
            [e.query_id for e in entries],
            np.stack([e.vector for e in entries]),
            [e.outcomes for e in entries],
            [e.category for e in entries],
            [e.category_is_label for e in entries],
        )
