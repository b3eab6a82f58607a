"""Generations in PostgreSQL: a snapshot row (meta, stamped with ``log_end``) and its files
in parts (a bytea value holds at most 1 GB; a 10M-query flat index is 15 GB).

A write is one transaction that inserts the new snapshot and deletes the memory's older
ones, so exactly one is current whatever fails; readers in a REPEATABLE READ transaction
keep seeing the one they started with. Every file and the meta are checked against their
sha256 when read.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .generations import ARRAYS_FILE, INDEX_FILE, GenerationRef, StoredGeneration, sha256
from .records import OutcomeMemoryError

if TYPE_CHECKING:
    import psycopg

PART_BYTES = 32 << 20  # generation files are stored in parts of this size


def current_snapshot(conn: psycopg.Connection[Any], memory: str) -> GenerationRef | None:
    row = conn.execute(
        "SELECT name, embedder_id, log_end, lineage, meta_sha256 FROM emafusion_snapshots"
        " WHERE memory = %s ORDER BY name DESC LIMIT 1",
        (memory,),
    ).fetchone()
    return None if row is None else GenerationRef(*row)


def read_snapshot(
    conn: psycopg.Connection[Any], memory: str, ref: GenerationRef, where: Path
) -> StoredGeneration:
    row = conn.execute(
        "SELECT meta FROM emafusion_snapshots WHERE memory = %s AND name = %s",
        (memory, ref.name),
        binary=True,
    ).fetchone()
    parts = conn.execute(
        "SELECT file, data FROM emafusion_snapshot_parts WHERE memory = %s AND "
        "snapshot = %s ORDER BY file, part",
        (memory, ref.name),
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


def write_snapshot(
    conn: psycopg.Connection[Any],
    memory: str,
    files: Mapping[str, bytes],
    meta: dict[str, Any],
    *,
    log_end: int,
    lineage: str,
    embedder_id: str,
) -> str:
    """Publish a new current snapshot (and the memory's embedder); its name."""
    meta = dict(meta, log_end=log_end, lineage=lineage, files={})
    for file, data in files.items():
        meta["files"][file] = {"bytes": len(data), "sha256": sha256(data)}
    meta_bytes = json.dumps(meta, sort_keys=True).encode()
    with conn.transaction():
        conn.execute(
            "INSERT INTO emafusion_memories (name, embedder_id, dim) VALUES (%s, %s, %s) "
            "ON CONFLICT (name) DO UPDATE SET embedder_id = excluded.embedder_id, "
            "dim = excluded.dim",
            (memory, embedder_id, int(meta["dim"])),
        )
        names = conn.execute(
            "SELECT name FROM emafusion_snapshots WHERE memory = %s", (memory,)
        ).fetchall()
        number = max((int(n.split("-")[1]) for (n,) in names), default=0) + 1
        name = f"gen-{number:06d}-{secrets.token_hex(4)}"
        conn.execute(
            "INSERT INTO emafusion_snapshots (memory, name, lineage, embedder_id, log_end, "
            "meta, meta_sha256) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (memory, name, lineage, embedder_id, log_end, meta_bytes, sha256(meta_bytes)),
        )
        with conn.cursor() as cur:
            for file, data in files.items():
                view = memoryview(data)
                for part, at in enumerate(range(0, max(len(view), 1), PART_BYTES)):
                    cur.execute(
                        "INSERT INTO emafusion_snapshot_parts (memory, snapshot, file, part, "
                        "data) VALUES (%s, %s, %s, %s, %s)",
                        (memory, name, file, part, bytes(view[at : at + PART_BYTES])),
                    )
        conn.execute(
            "DELETE FROM emafusion_snapshots WHERE memory = %s AND name <> %s", (memory, name)
        )
    return name
