"""The PostgreSQL schema of the shared outcome store: tables, version, migration, URLs.

Tables (one database can hold many memories, each by name):

    emafusion_schema           one row: the schema version this database is at
    emafusion_memories         a memory's name, embedder and vector dimension
    emafusion_outcomes         the append-only outcome log: one row per (query, model) outcome
    emafusion_snapshots        generations: a FAISS index + arrays, stamped with ``log_end``
    emafusion_snapshot_parts   the generation files, in parts (a bytea holds at most 1 GB)

A version mismatch is refused with the command that fixes it: an older database with
``emafusion memory migrate --store-url URL``, a newer one by upgrading emafusion. A database
with no emafusion tables at all is created at the current version on first use.

URLs are shown with `redact`: the password (in the URL or a ``password=`` parameter) never
reaches a message or a log.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .records import OutcomeMemoryError

if TYPE_CHECKING:
    import psycopg

SCHEMA_VERSION = 1
# Advisory-lock class ids (the first key of pg_advisory_lock(int, int)); the second key is
# hashtext(memory name). Chosen to be unlikely to collide with other applications' locks.
LOCK_APPEND = 0x45460001  # appends of one memory, in sequence order (transaction lock)
LOCK_GENERATION = 0x45460002  # generation writers (session lock)
LOCK_LEADER = 0x45460003  # the replica that compacts in the background (session lock)
LOCK_MIGRATE = 0x45460004

# Migrations by the version they bring the database to; each is idempotent.
MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE IF NOT EXISTS emafusion_memories (
            name text PRIMARY KEY,
            embedder_id text NOT NULL,
            dim integer NOT NULL CHECK (dim > 0),
            created_at timestamptz NOT NULL DEFAULT now())""",
        # Positions of the log: one sequence for every memory, so a position only grows.
        "CREATE SEQUENCE IF NOT EXISTS emafusion_outcome_seq AS bigint",
        # One row per outcome. The rows of one memory entry (a query and the outcomes
        # recorded with it) share `entry`, the seq of its first row, which also carries the
        # embedding (dim little-endian float32). An entry without outcomes has one row with
        # model NULL.
        """CREATE TABLE IF NOT EXISTS emafusion_outcomes (
            memory text NOT NULL REFERENCES emafusion_memories (name) ON DELETE CASCADE,
            seq bigint NOT NULL DEFAULT nextval('emafusion_outcome_seq'),
            entry bigint NOT NULL,
            query_id text NOT NULL,
            embedding bytea,
            category text,
            category_is_label boolean NOT NULL DEFAULT false,
            model text,
            score double precision,
            source text,
            cost_usd double precision,
            latency_s double precision,
            outcome_time double precision,
            recorded_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (memory, seq),
            CHECK ((model IS NULL) = (score IS NULL)))""",
        """CREATE TABLE IF NOT EXISTS emafusion_snapshots (
            memory text NOT NULL REFERENCES emafusion_memories (name) ON DELETE CASCADE,
            name text NOT NULL,
            lineage text NOT NULL,
            embedder_id text NOT NULL,
            log_end bigint NOT NULL,
            meta bytea NOT NULL,
            meta_sha256 text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (memory, name))""",
        """CREATE TABLE IF NOT EXISTS emafusion_snapshot_parts (
            memory text NOT NULL,
            snapshot text NOT NULL,
            file text NOT NULL,
            part integer NOT NULL,
            data bytea NOT NULL,
            PRIMARY KEY (memory, snapshot, file, part),
            FOREIGN KEY (memory, snapshot)
                REFERENCES emafusion_snapshots (memory, name) ON DELETE CASCADE)""",
    ],
}


class StoreUnavailableError(OutcomeMemoryError):
    """The database cannot be reached (at start, or for a read while it is down)."""


class SchemaVersionError(OutcomeMemoryError):
    """The database's schema is at another version than this code's."""


def redact(url: str) -> str:
    """`url` without its password: fit for messages and logs."""
    if "://" not in url:  # a key=value conninfo string
        parts = []
        for token in url.split():
            key = token.split("=", 1)[0].strip().lower()
            parts.append(f"{key}=***" if key == "password" else token)
        return " ".join(parts)
    split = urlsplit(url)
    netloc = split.netloc
    if "@" in netloc:
        user, host = netloc.rsplit("@", 1)
        if ":" in user:
            user = user.split(":", 1)[0] + ":***"
        netloc = f"{user}@{host}"
    query = split.query
    if query:
        pairs = [(k, "***" if k.lower() == "password" else v) for k, v in parse_qsl(query)]
        query = urlencode(pairs, safe="*")
    return urlunsplit((split.scheme, netloc, split.path, query, split.fragment))


def scrub(text: str, url: str) -> str:
    """A driver's message with the URL's password removed, should it appear in it."""
    try:
        import psycopg.conninfo

        password = psycopg.conninfo.conninfo_to_dict(url).get("password")
    except Exception:  # noqa: BLE001 - an unparsable URL has no password to scrub
        password = None
    return text.replace(str(password), "***") if password else text


def migrate_command(url: str) -> str:
    return f"emafusion memory migrate --store-url '{redact(url)}'"


def database_version(conn: psycopg.Connection[Any]) -> int | None:
    """The schema version recorded in the database; None where emafusion never ran."""
    row = conn.execute("SELECT to_regclass('emafusion_schema') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return None
    found = conn.execute("SELECT version FROM emafusion_schema").fetchone()
    return 0 if found is None else int(found[0])


def check_schema(conn: psycopg.Connection[Any], url: str, *, create: bool) -> None:
    """Refuse a database at another schema version; create a blank one when `create`."""
    version = database_version(conn)
    if version is None and create:
        migrate(conn)
        return
    if version is None or version < SCHEMA_VERSION:
        raise SchemaVersionError(
            f"the database at {redact(url)} has emafusion schema version "
            f"{'none' if version is None else version}; this emafusion needs version "
            f"{SCHEMA_VERSION}. Fix: run `{migrate_command(url)}` (with the real password), "
            "then start again"
        )
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"the database at {redact(url)} has emafusion schema version {version}, newer "
            f"than this emafusion's {SCHEMA_VERSION}: it was migrated by a newer release. "
            "Fix: upgrade emafusion on this machine to the release that migrated it"
        )


def migrate(conn: psycopg.Connection[Any]) -> tuple[int | None, int]:
    """Bring the database to `SCHEMA_VERSION` (one transaction, one migrator at a time);
    the versions before and after."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (LOCK_MIGRATE,))
        conn.execute(
            """CREATE TABLE IF NOT EXISTS emafusion_schema (
                singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
                version integer NOT NULL,
                migrated_at timestamptz NOT NULL DEFAULT now())"""
        )
        row = conn.execute("SELECT version FROM emafusion_schema").fetchone()
        before = None if row is None else int(row[0])
        start = before or 0
        if start > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"the database has emafusion schema version {start}, newer than this "
                f"emafusion's {SCHEMA_VERSION}; upgrade emafusion instead of migrating"
            )
        for version in range(start + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[version]:
                conn.execute(statement)
        conn.execute(
            """INSERT INTO emafusion_schema (singleton, version) VALUES (true, %s)
               ON CONFLICT (singleton) DO UPDATE SET version = excluded.version,
               migrated_at = now()""",
            (SCHEMA_VERSION,),
        )
    return before, SCHEMA_VERSION
