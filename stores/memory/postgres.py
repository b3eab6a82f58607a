"""`PostgresStore`: an `OutcomeStore` on PostgreSQL, for many router replicas sharing one memory.

Selected by a deployment setting (``EMAFUSION_STORE_URL=postgresql://...``); psycopg is
imported only when a store is opened, so nothing needs PostgreSQL while it is unset.

Log. Appends go to ``emafusion_outcomes`` (see ``postgres_schema``), one transaction per
batch, with a NOTIFY on the memory's channel that PostgreSQL delivers at commit. An entry's
position is the sequence number of its first row. Positions come from one sequence, and the
appends of one memory are serialized by a transaction-level advisory lock taken before the
numbers are drawn: a transaction commits (becomes visible) before the next one draws, so
every reader sees a *prefix* of the log and can tail it from the position it read to without
missing a row that commits later with a smaller number (what bare bigserial inserts from
many writers would allow). The price is one commit at a time per memory: batch appends.

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
import hashlib
import json
import logging
import secrets
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .generations import ARRAYS_FILE, INDEX_FILE, GenerationRef, StoredGeneration, sha256
from .log import LogRead
from .postgres_schema import (
    LOCK_APPEND,
    LOCK_GENERATION,
    LOCK_LEADER,
    StoreUnavailableError,
    check_schema,
    redact,
    scrub,
)
from .records import LogEntry, OutcomeMemoryError, OutcomeRecord
from .store import StoreHealth

if TYPE_CHECKING:
    import psycopg

    from .outcome_memory import OutcomeMemory

logger = logging.getLogger(__name__)

QUEUED = -1  # an appended entry kept in memory while the database is unreachable
DROPPED = -2  # an appended entry dropped: the outage buffer was full
PART_BYTES = 32 << 20  # generation files are stored in parts of this size
READ_PAGE_ROWS = 20_000  # log rows fetched per query when reading
_COLUMNS = (
    "memory, seq, entry, query_id, embedding, category, category_is_label, model, score, "
    "source, cost_usd, latency_s, outcome_time"
)
_before_commit: Callable[[], None] | None = None  # tests stall a batch here to kill its writer


def is_store_url(value: str | Path | None) -> bool:
    return isinstance(value, str) and value.startswith(("postgresql://", "postgres://"))


def _channel(memory: str) -> str:
    return "emafusion_" + hashlib.sha256(memory.encode()).hexdigest()[:24]


def _key(memory: str) -> int:
    """The second advisory-lock key of a memory: a stable signed 32-bit hash of its name."""
    value = zlib.crc32(memory.encode())
    return value - (1 << 32) if value >= 1 << 31 else value


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
            conn.execute("SELECT pg_advisory_lock(%s, %s)", (LOCK_GENERATION, _key(self.name)))
            try:
                yield
            finally:
                if not conn.broken:  # a lost session has released it already
                    conn.execute(
                        "SELECT pg_advisory_unlock(%s, %s)", (LOCK_GENERATION, _key(self.name))
                    )

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._session() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            yield

    def current(self) -> GenerationRef | None:
        with self._session() as conn:
            row = conn.execute(
                "SELECT name, embedder_id, log_end, lineage, meta_sha256 FROM emafusion_snapshots"
                " WHERE memory = %s ORDER BY name DESC LIMIT 1",
                (self.name,),
            ).fetchone()
        return None if row is None else GenerationRef(*row)

    def where(self, name: str) -> Path:
        return Path(self.location) / name

    def read_generation(self, ref: GenerationRef) -> StoredGeneration:
        where = self.where(ref.name)
        with self._session() as conn:
            row = conn.execute(
                "SELECT meta FROM emafusion_snapshots WHERE memory = %s AND name = %s",
                (self.name, ref.name),
                binary=True,
            ).fetchone()
            parts = conn.execute(
                "SELECT file, data FROM emafusion_snapshot_parts WHERE memory = %s AND "
                "snapshot = %s ORDER BY file, part",
                (self.name, ref.name),
                binary=True,
            ).fetchall()
        if row is None:
            raise OutcomeMemoryError(f"{where} is gone; it was replaced while being read")
        meta_bytes = bytes(row[0])
        if sha256(meta_bytes) != ref.meta_sha256:
            raise OutcomeMemoryError(f"{where}: meta fails its sha256 check; it is damaged")
        chunks: dict[str, list[bytes]] = {}
        for file, data in parts:
            chunks.setdefault(file, []).append(bytes(data))
        blobs = {file: b"".join(pieces) for file, pieces in chunks.items()}
        meta = json.loads(meta_bytes)
        for file, info in meta.get("files", {}).items():
            blob = blobs.get(file, b"")
            if len(blob) != info["bytes"] or sha256(blob) != info["sha256"]:
                raise OutcomeMemoryError(
                    f"{where}/{file} is truncated or fails its sha256 check; the snapshot is "
                    "damaged: compact again from a replica that holds the memory, or rebuild it"
                )
        if set(blobs) != {INDEX_FILE, ARRAYS_FILE}:
            raise OutcomeMemoryError(f"{where} holds files {sorted(blobs)}; it is damaged")
        return StoredGeneration(ref, meta, blobs, where)

    def write_generation(
        self,
        files: Mapping[str, bytes],
        meta: dict[str, Any],
        *,
        log_end: int,
        lineage: str,
        embedder_id: str,
    ) -> str:
        meta = dict(meta, log_end=log_end, lineage=lineage, files={})
        for file, data in files.items():
            meta["files"][file] = {"bytes": len(data), "sha256": sha256(data)}
        meta_bytes = json.dumps(meta, sort_keys=True).encode()
        dim = int(meta["dim"])
        with self._session() as conn, conn.transaction():
            conn.execute(
                "INSERT INTO emafusion_memories (name, embedder_id, dim) VALUES (%s, %s, %s) "
                "ON CONFLICT (name) DO UPDATE SET embedder_id = excluded.embedder_id, "
                "dim = excluded.dim",
                (self.name, embedder_id, dim),
            )
            names = conn.execute(
                "SELECT name FROM emafusion_snapshots WHERE memory = %s", (self.name,)
            ).fetchall()
            number = max((int(n.split("-")[1]) for (n,) in names), default=0) + 1
            name = f"gen-{number:06d}-{secrets.token_hex(4)}"
            conn.execute(
                "INSERT INTO emafusion_snapshots (memory, name, lineage, embedder_id, log_end, "
                "meta, meta_sha256) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (self.name, name, lineage, embedder_id, log_end, meta_bytes, sha256(meta_bytes)),
            )
            with conn.cursor() as cur:
                for file, data in files.items():
                    view = memoryview(data)
                    for part, at in enumerate(range(0, max(len(view), 1), PART_BYTES)):
                        cur.execute(
                            "INSERT INTO emafusion_snapshot_parts (memory, snapshot, file, part,"
                            " data) VALUES (%s, %s, %s, %s, %s)",
                            (self.name, name, file, part, bytes(view[at : at + PART_BYTES])),
                        )
            conn.execute(
                "DELETE FROM emafusion_snapshots WHERE memory = %s AND name <> %s",
                (self.name, name),
            )
        self._checked = (embedder_id, dim)
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
        """One transaction: lock this memory's log, draw the numbers, COPY the rows, NOTIFY."""
        rows_per_entry = [max(1, len(e.outcomes)) for e in entries]
        conn = self._connection()
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_APPEND, _key(self.name)))
            self._check_binding(conn)
            seqs = [
                int(s)
                for (s,) in conn.execute(
                    "SELECT nextval('emafusion_outcome_seq') FROM generate_series(1, %s)",
                    (sum(rows_per_entry),),
                ).fetchall()
            ]
            seqs.sort()
            positions, at = [], 0
            with conn.cursor().copy(f"COPY emafusion_outcomes ({_COLUMNS}) FROM STDIN") as copy:
                for entry, n in zip(entries, rows_per_entry, strict=True):
                    positions.append(seqs[at])
                    for row in self._rows(entry, seqs[at : at + n]):
                        copy.write_row(row)
                    at += n
            conn.execute("SELECT pg_notify(%s, %s)", (_channel(self.name), str(seqs[-1])))
            if _before_commit is not None:
                _before_commit()
        return positions

    def _rows(self, entry: LogEntry, seqs: list[int]) -> Iterator[tuple[Any, ...]]:
        vector = np.ascontiguousarray(entry.vector, dtype="<f4").tobytes()
        outcomes: Sequence[OutcomeRecord | None] = entry.outcomes or (None,)
        for i, (seq, o) in enumerate(zip(seqs, outcomes, strict=True)):
            head: tuple[Any, ...] = (self.name, seq, seqs[0], entry.query_id)
            head += (vector if i == 0 else None, entry.category, entry.category_is_label)
            if o is None:
                yield (*head, None, None, None, None, None, None)
            else:
                yield (*head, o.model, o.score, o.source, o.cost_usd, o.latency_s, o.timestamp)

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
        """Entries from `position`, in pages by sequence number (keyset pagination: a page
        that ends inside an entry carries its rows over to the next)."""
        if self._embedder is None:
            raise RuntimeError("PostgresStore.bind(embedder_id, dim) must come first")
        dim = self._embedder[1]
        cur = conn.cursor(binary=True)
        read = LogRead(end=position)
        group: list[tuple[Any, ...]] = []
        after = position
        while True:
            cur.execute(
                f"SELECT {_COLUMNS} FROM emafusion_outcomes WHERE memory = %s AND seq >= %s "
                "ORDER BY seq LIMIT %s",
                (self.name, after, READ_PAGE_ROWS),
            )
            rows = cur.fetchall()
            for row in rows:
                if group and row[2] != group[0][2]:
                    self._decode(group, dim, read)
                    group = []
                group.append(row)
            if len(rows) < READ_PAGE_ROWS:
                break
            after = int(rows[-1][1]) + 1
        if group:
            self._decode(group, dim, read)
            read.end = max(read.end, int(group[-1][1]) + 1)
        return read

    def _decode(self, rows: list[tuple[Any, ...]], dim: int, read: LogRead) -> None:
        """One entry from its rows, or a dropped record (counted) if it does not decode."""
        first = rows[0]
        try:
            vector = np.frombuffer(bytes(first[4] or b""), dtype="<f4").astype(np.float32)
            if len(vector) != dim or int(first[1]) != int(first[2]):
                raise ValueError(f"embedding of {len(vector)} floats, expected {dim}")
            outcomes = tuple(
                OutcomeRecord(
                    model=r[7], score=r[8], source=r[9], cost_usd=r[10], latency_s=r[11],
                    timestamp=r[12],
                )
                for r in rows
                if r[7] is not None
            )
            entry = LogEntry(str(first[3]), vector, outcomes, first[5], bool(first[6]))
        except (ValueError, TypeError) as exc:
            read.dropped += 1
            read.dropped_bytes += sum(len(bytes(r[4] or b"")) for r in rows)
            read.damaged.append(f"{self.location} seq {first[1]}: {exc}")
            return
        read.entries.append((int(first[2]), entry))

    def seal(self, position: int) -> LogRead:
        with self._session() as conn, conn.transaction():
            # With the append lock held no append is in flight: what is read is the whole
            # log, and every later append draws a number past its end.
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_APPEND, _key(self.name)))
            return self._read(conn, position)

    def discard_before(self, position: int) -> None:
        with self._session() as conn:
            conn.execute(
                "DELETE FROM emafusion_outcomes WHERE memory = %s AND seq < %s",
                (self.name, position),
            )

    def restart_log(self, embedder_id: str, dim: int) -> None:
        with self._session() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_APPEND, _key(self.name)))
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
            conn.execute(f'LISTEN "{_channel(self.name)}"')
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
                "SELECT pg_try_advisory_lock(%s, %s)", (LOCK_LEADER, _key(self.name))
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
