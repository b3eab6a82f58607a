"""The outcome log in PostgreSQL: appending a batch in one transaction, reading it back.

An entry (a query and the outcomes recorded with it) is one row per outcome in
``emafusion_outcomes``; its rows share ``entry``, the sequence number of the first row, which
is the entry's position and the row that carries the embedding. An entry without outcomes is
one row with ``model`` NULL.

Why appends take a lock: numbers drawn from a sequence by concurrent transactions commit in
any order, so a reader that saw number 10 committed could later miss number 9. Appends of
one memory therefore take a transaction-level advisory lock before drawing their numbers
and hold it until they commit: every snapshot then sees a prefix of the memory's log.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .log import LogRead
from .postgres_schema import LOCK_APPEND
from .records import LogEntry, OutcomeRecord

if TYPE_CHECKING:
    import psycopg

READ_PAGE_ROWS = 20_000  # log rows fetched per query when reading
COLUMNS = (
    "memory, seq, entry, query_id, embedding, category, category_is_label, model, score, "
    "source, cost_usd, latency_s, outcome_time"
)
COPY_TYPES = [
    "text", "int8", "int8", "text", "bytea", "text", "bool", "text", "float8", "text", "float8",
    "float8", "float8",
]
_before_commit: Callable[[], None] | None = None  # tests stall a batch here to kill its writer


def channel(memory: str) -> str:
    """The NOTIFY channel of a memory (an identifier of bounded length)."""
    return "emafusion_" + hashlib.sha256(memory.encode()).hexdigest()[:24]


def lock_key(memory: str) -> int:
    """The second advisory-lock key of a memory: a stable signed 32-bit hash of its name."""
    value = zlib.crc32(memory.encode())
    return value - (1 << 32) if value >= 1 << 31 else value


def lock_appends(conn: psycopg.Connection[Any], memory: str) -> None:
    """Hold off this memory's other appends until the current transaction ends."""
    conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_APPEND, lock_key(memory)))


def append_entries(
    conn: psycopg.Connection[Any],
    memory: str,
    entries: Sequence[LogEntry],
    check: Callable[[psycopg.Connection[Any]], None],
) -> list[int]:
    """One transaction: lock the memory's log, draw the numbers, COPY the rows, NOTIFY;
    the entries' positions. `check` runs under the lock (the embedder binding)."""
    rows_per_entry = [max(1, len(e.outcomes)) for e in entries]
    with conn.transaction():
        lock_appends(conn, memory)
        check(conn)
        drawn = conn.execute(
            "SELECT nextval('emafusion_outcome_seq') FROM generate_series(1, %s)",
            (sum(rows_per_entry),),
        ).fetchall()
        seqs = sorted(int(s) for (s,) in drawn)
        positions, at = [], 0
        sql = f"COPY emafusion_outcomes ({COLUMNS}) FROM STDIN (FORMAT BINARY)"
        with conn.cursor().copy(sql) as copy:
            copy.set_types(COPY_TYPES)
            for entry, n in zip(entries, rows_per_entry, strict=True):
                positions.append(seqs[at])
                for row in entry_rows(memory, entry, seqs[at : at + n]):
                    copy.write_row(row)
                at += n
        conn.execute("SELECT pg_notify(%s, %s)", (channel(memory), str(seqs[-1])))
        if _before_commit is not None:
            _before_commit()
    return positions


def entry_rows(memory: str, entry: LogEntry, seqs: list[int]) -> Iterator[tuple[Any, ...]]:
    vector = np.ascontiguousarray(entry.vector, dtype="<f4").tobytes()
    outcomes: Sequence[OutcomeRecord | None] = entry.outcomes or (None,)
    for i, (seq, o) in enumerate(zip(seqs, outcomes, strict=True)):
        head: tuple[Any, ...] = (memory, seq, seqs[0], entry.query_id)
        head += (vector if i == 0 else None, entry.category, entry.category_is_label)
        if o is None:
            yield (*head, None, None, None, None, None, None)
        else:
            yield (*head, o.model, o.score, o.source, o.cost_usd, o.latency_s, o.timestamp)


def read_log(
    conn: psycopg.Connection[Any], memory: str, position: int, dim: int, location: str
) -> LogRead:
    """Entries from `position`, in pages by sequence number (keyset pagination: a page
    that ends inside an entry carries its rows over to the next)."""
    cur = conn.cursor(binary=True)
    read = LogRead(end=position)
    group: list[tuple[Any, ...]] = []
    after = position
    while True:
        cur.execute(
            f"SELECT {COLUMNS} FROM emafusion_outcomes WHERE memory = %s AND seq >= %s "
            "ORDER BY seq LIMIT %s",
            (memory, after, READ_PAGE_ROWS),
        )
        rows = cur.fetchall()
        for row in rows:
            if group and row[2] != group[0][2]:
                decode_rows(group, dim, read, location)
                group = []
            group.append(row)
        if len(rows) < READ_PAGE_ROWS:
            break
        after = int(rows[-1][1]) + 1
    if group:
        decode_rows(group, dim, read, location)
        read.end = max(read.end, int(group[-1][1]) + 1)
    return read


def decode_rows(rows: list[tuple[Any, ...]], dim: int, read: LogRead, location: str) -> None:
    """One entry from its rows into `read`, or a dropped record (counted) if it does not
    decode (a row written outside emafusion, say)."""
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
        read.damaged.append(f"{location} seq {first[1]}: {exc}")
        return
    read.entries.append((int(first[2]), entry))
