"""`PostgresStore`: an `OutcomeStore` on PostgreSQL, for many router replicas sharing one memory.

Selected by a deployment setting (``EMAFUSION_STORE_URL=postgresql://...``); psycopg is
imported only when a store is opened, so nothing needs PostgreSQL while it is unset.

Log. Appends go to ``emafusion_outcomes`` (see ``postgres_log``), one transaction per batch
with a NOTIFY on the memory's channel that PostgreSQL delivers at commit. An entry's position
is the sequence number of its first row; the appends of one memory commit one at a time, so
every reader sees a prefix of the log and tails it from the position it read to.

Generations are rows of ``emafusion_snapshots`` (stamped with ``log_end``: they hold every
outcome before it) with their files in ``emafusion_snapshot_parts``. Readers read a
generation and the log after it in one REPEATABLE READ transaction, so a compaction that
publishes a new one meanwhile (and deletes the old one and the log it holds) changes nothing
they see; generation writers exclude each other with a session advisory lock.

Outages. The database unreachable at start is an error naming the URL (never the
password). Lost later, `append` keeps the batch in a bounded buffer (``pending_limit``
entries) and returns `QUEUED` for its positions; the buffer is written, in order, before the
next append or by `flush_pending` (the follower calls it), and entries that do not fit are
dropped, returned as `DROPPED` and counted in `health` — never silently. Reads raise
`StoreUnavailableError`; the memory keeps answering from its in-memory index meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .generations import GenerationRef, StoredGeneration
from .log import LogRead
from .postgres_log import append_entries, channel, lock_appends, lock_key, read_log
from .postgres_schema import (
    LOCK_GENERATION,
    LOCK_LEADER,
    StoreUnavailableError,
    check_schema,
    redact,
    scrub,
)
from .postgres_snapshots import current_snapshot, read_snapshot, write_snapshot
from .records import LogEntry, OutcomeMemoryError
from .store import StoreHealth

if TYPE_CHECKING:
    import psycopg

    from .outcome_memory import OutcomeMemory

logger = logging.getLogger(__name__)

QUEUED = -1  # an appended entry kept in memory while the database is unreachable
DROPPED = -2  # an appended entry dropped: the outage buffer was full


def is_store_url(value: str | Path | None) -> bool:
    return isinstance(value, str) and value.startswith(("postgresql://", "postgres://"))


class PostgresStore:
    """One memory (by ``name``) in a PostgreSQL database; see the module docstring.

    Thread-safe: one connection for queries (behind a lock) and one for LISTEN (used by
    `wait_for_change` and `try_lead`, i.e. the follower thread).
    """

    def __init__(
        self,
        url: str,
        name: str = "default",
        *,
        create_schema: bool = True,
        pending_limit: int = 10_000,
        connect_timeout_s: float = 5.0,
    ) -> None:
        if not name:
            raise OutcomeMemoryError("a PostgresStore needs a non-empty memory name")
        self.url = url
        self.name = name
        self.location = f"{redact(url)}#{name}"
        self.missing_hint = f"no snapshot of memory {name!r} in the database"
        self.pending_limit = pending_limit
        self.connect_timeout_s = connect_timeout_s
        self._lock = threading.RLock()
        self._embedder: tuple[str, int] | None = None
        self._checked: tuple[str, int] | None = None  # binding confirmed against the database
        self._conn: psycopg.Connection[Any] | None = None
        self._listen: psycopg.Connection[Any] | None = None
        self._leader = False
        self._pending: list[LogEntry] = []
        self._health = StoreHealth()
        self._down_since: float | None = None
        self._conn = self._connect()  # unreachable at start: a clear error, right away
        with self._lock:
            check_schema(self._conn, url, create=create_schema)

    # ---------------------------------------------------------------- connections

    def _connect(self) -> psycopg.Connection[Any]:
        import psycopg

        try:
            return psycopg.connect(
                self.url, autocommit=True, connect_timeout=max(1, round(self.connect_timeout_s))
            )
        except psycopg.OperationalError as exc:
            raise StoreUnavailableError(
                f"cannot reach PostgreSQL at {redact(self.url)}: "
                f"{scrub(str(exc).strip().rstrip('.'), self.url)}. Fix: start the server or point "
                "EMAFUSION_STORE_URL (--store-url) at a reachable one"
            ) from None

    def _connection(self) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            self._conn = conn = self._connect()
        return conn

    @contextlib.contextmanager
    def _session(self) -> Iterator[psycopg.Connection[Any]]:
        """The query connection, reconnecting once broken; failures as StoreUnavailableError."""
        import psycopg

        with self._lock:
            try:
                yield self._connection()
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                self._lost(exc)
                raise StoreUnavailableError(
                    f"lost PostgreSQL at {redact(self.url)}: {scrub(str(exc).strip(), self.url)}"
                ) from None

    def _lost(self, exc: BaseException) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            self._health = self._health.but(outages=self._health.outages + 1)
            logger.warning(
                "PostgreSQL at %s unreachable (%s); answering from the in-memory index, "
                "queueing up to %d appended entries",
                redact(self.url),
                scrub(str(exc).strip(), self.url),
                self.pending_limit,
            )
        self._health = self._health.but(connected=False, last_error=scrub(str(exc), self.url))

    def _back(self) -> None:
        if self._down_since is not None:
            logger.warning(
                "PostgreSQL at %s reachable again after %.1f s",
                redact(self.url),
                time.monotonic() - self._down_since,
            )
            self._down_since = None
        self._health = self._health.but(connected=True)

    def close(self) -> None:
        with self._lock:
            for conn in (self._conn, self._listen):
                if conn is not None:
                    conn.close()
            self._conn = self._listen = None

    # ---------------------------------------------------------------- OutcomeStore

    def bind(self, embedder_id: str, dim: int) -> None:
        self._embedder = (embedder_id, dim)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._session() as conn:
            conn.execute("SELECT pg_advisory_lock(%s, %s)", (LOCK_GENERATION, lock_key(self.name)))
            try:
                yield
            finally:
                if not conn.broken:  # a lost session has released it already
                    conn.execute(
                        "SELECT pg_advisory_unlock(%s, %s)", (LOCK_GENERATION, lock_key(self.name))
                    )

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._session() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            yield

    def current(self) -> GenerationRef | None:
        with self._session() as conn:
            return current_snapshot(conn, self.name)

    def where(self, name: str) -> Path:
        return Path(self.location) / name

    def read_generation(self, ref: GenerationRef) -> StoredGeneration:
        with self._session() as conn:
            return read_snapshot(conn, self.name, ref, self.where(ref.name))

    def write_generation(
        self,
        files: Mapping[str, bytes],
        meta: dict[str, Any],
        *,
        log_end: int,
        lineage: str,
        embedder_id: str,
    ) -> str:
        with self._session() as conn:
            name = write_snapshot(
                conn, self.name, files, meta,
                log_end=log_end, lineage=lineage, embedder_id=embedder_id,
            )
        self._checked = (embedder_id, int(meta["dim"]))
        return name

    # ---------------------------------------------------------------- the log

    def append(self, entries: Sequence[LogEntry]) -> list[int]:
        if not entries:
            return []
        import psycopg

        with self._lock:
            try:
                self._flush_locked()
                positions = self._append_now(entries)
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                self._lost(exc)
                return self._queue(entries)
            except StoreUnavailableError as exc:
                self._lost(exc)
                return self._queue(entries)
            self._back()
            return positions

    def _queue(self, entries: Sequence[LogEntry]) -> list[int]:
        room = max(0, self.pending_limit - len(self._pending))
        kept, lost = list(entries[:room]), len(entries) - min(room, len(entries))
        self._pending.extend(kept)
        health = self._health
        self._health = health.but(queued=len(self._pending), dropped=health.dropped + lost)
        if lost:
            logger.error(
                "outage buffer full (%d entries): dropped %d appended entries (%d in all)",
                self.pending_limit,
                lost,
                self._health.dropped,
            )
        return [QUEUED] * len(kept) + [DROPPED] * lost

    def flush_pending(self) -> int:
        """Write the entries queued during an outage; how many were written (0 while the
        database is still unreachable)."""
        import psycopg

        with self._lock:
            if not self._pending:
                return 0
            try:
                written = self._flush_locked()
            except (psycopg.OperationalError, psycopg.InterfaceError, StoreUnavailableError) as e:
                self._lost(e)
                return 0
            self._back()
            return written

    def _flush_locked(self) -> int:
        if not self._pending:
            return 0
        batch = list(self._pending)
        self._append_now(batch)
        del self._pending[: len(batch)]
        health = self._health
        self._health = health.but(queued=len(self._pending), flushed=health.flushed + len(batch))
        return len(batch)

    def _append_now(self, entries: Sequence[LogEntry]) -> list[int]:
        return append_entries(self._connection(), self.name, entries, self._check_binding)

    def _check_binding(self, conn: psycopg.Connection[Any]) -> None:
        if self._embedder is None:
            raise RuntimeError("PostgresStore.bind(embedder_id, dim) must come first")
        if self._checked == self._embedder:
            return
        row = conn.execute(
            "SELECT embedder_id, dim FROM emafusion_memories WHERE name = %s", (self.name,)
        ).fetchone()
        if row is None:
            raise OutcomeMemoryError(
                f"no saved OutcomeMemory {self.name!r} in {redact(self.url)} to append to; "
                "save() one there first"
            )
        if (row[0], int(row[1])) != self._embedder:
            raise OutcomeMemoryError(
                f"memory {self.name!r} in {redact(self.url)} holds vectors of embedder "
                f"{row[0]!r} ({row[1]}-d), not {self._embedder[0]!r} ({self._embedder[1]}-d); "
                "they are incomparable. Use another memory name for this embedder"
            )
        self._checked = self._embedder

    def read_since(self, position: int) -> LogRead:
        with self._session() as conn:
            return self._read(conn, position)

    def _read(self, conn: psycopg.Connection[Any], position: int) -> LogRead:
        if self._embedder is None:
            raise RuntimeError("PostgresStore.bind(embedder_id, dim) must come first")
        return read_log(conn, self.name, position, self._embedder[1], self.location)

    def seal(self, position: int) -> LogRead:
        with self._session() as conn, conn.transaction():
            # With the append lock held no append is in flight: what is read is the whole
            # log, and every later append draws a number past its end.
            lock_appends(conn, self.name)
            return self._read(conn, position)

    def discard_before(self, position: int) -> None:
        with self._session() as conn:
            conn.execute(
                "DELETE FROM emafusion_outcomes WHERE memory = %s AND seq < %s",
                (self.name, position),
            )

    def restart_log(self, embedder_id: str, dim: int) -> None:
        with self._session() as conn, conn.transaction():
            lock_appends(conn, self.name)
            conn.execute("DELETE FROM emafusion_outcomes WHERE memory = %s", (self.name,))
        self._checked = None
        self.bind(embedder_id, dim)

    def same_place(self, other: object) -> bool:
        return isinstance(other, PostgresStore) and (other.url, other.name) == (
            self.url,
            self.name,
        )

    def backlog(self) -> int:
        """Log entries after the current generation (what a compaction would fold in)."""
        ref = self.current()
        with self._session() as conn:
            row = conn.execute(
                "SELECT count(DISTINCT entry) FROM emafusion_outcomes WHERE memory = %s AND "
                "seq >= %s",
                (self.name, 0 if ref is None else ref.log_end),
            ).fetchone()
        return int(row[0]) if row else 0

    def health(self) -> StoreHealth:
        return self._health

    # ---------------------------------------------------------------- followers

    def _listener(self) -> psycopg.Connection[Any]:
        conn = self._listen
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            self._leader = False  # a new session holds no lock
            conn = self._connect()
            conn.execute(f'LISTEN "{channel(self.name)}"')
            self._listen = conn
        return conn

    def wait_for_change(self, timeout_s: float) -> bool:
        import psycopg

        try:
            conn = self._listener()
            woken = any(True for _ in conn.notifies(timeout=timeout_s, stop_after=1))
            if woken:  # drain what else arrived, one refresh covers them all
                for _ in conn.notifies(timeout=0.0):
                    pass
            return woken
        except (psycopg.OperationalError, psycopg.InterfaceError, StoreUnavailableError) as e:
            if self._listen is not None:
                self._listen.close()
            self._lost(e)
            time.sleep(timeout_s)  # the fallback: poll at the follower's interval
            return False

    def try_lead(self) -> bool:
        """Whether this process is the memory's elected compactor (the holder of a session
        advisory lock on its LISTEN connection: a dead leader's lock goes with it)."""
        if self._leader:
            return True
        import psycopg

        try:
            row = self._listener().execute(
                "SELECT pg_try_advisory_lock(%s, %s)", (LOCK_LEADER, lock_key(self.name))
            ).fetchone()
        except (psycopg.OperationalError, psycopg.InterfaceError, StoreUnavailableError):
            return False
        self._leader = bool(row and row[0])
        return self._leader


def memory_names(url: str) -> list[str]:
    """The memories a database holds, by name."""
    store = PostgresStore(url, "-", create_schema=False)
    try:
        with store._session() as conn:
            rows = conn.execute("SELECT name FROM emafusion_memories ORDER BY name").fetchall()
        return [str(name) for (name,) in rows]
    finally:
        store.close()


def open_postgres_memory(
    url: str,
    name: str,
    *,
    seed: OutcomeMemory | None = None,
    expected_embedder_id: str | None = None,
) -> OutcomeMemory:
    """The memory `name` in the database at `url`; where it holds none yet, `seed` is saved
    there first (by the first of many replicas starting at once; the others load it)."""
    from .outcome_memory import OutcomeMemory

    store = PostgresStore(url, name)
    if store.current() is None:
        if seed is None:
            raise OutcomeMemoryError(
                f"{store.location} holds no memory {name!r} yet; save one there first "
                "(a deployment seeds it from its router directory on first start)"
            )
        with store.exclusive():
            if store.current() is None:
                seed.save(store)
                logger.warning("seeded memory %r in %s from %s", name, store.location, seed)
                return seed
    return OutcomeMemory.load(store, expected_embedder_id)
