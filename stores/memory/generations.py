"""Generations on disk: complete, checksummed snapshots of a memory, named by a manifest.

A memory directory holds generation subdirectories (``gen-000007-1a2b3c4d/`` with
``index.faiss``, ``outcomes.npz``, ``meta.json``) and ``MANIFEST.json`` naming the current
one. A write stages and fsyncs a complete new generation, renames it into place, atomically
replaces the manifest, then deletes older generations: a crash at any point leaves a
loadable memory (the old one until the manifest is replaced, the new one after).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emafusion.stores.atomic import fsync_dir

from .records import OutcomeMemoryError

FORMAT_NAME = "emafusion-outcome-memory"
FORMAT_VERSION = 2
MANIFEST_FILE = "MANIFEST.json"
INDEX_FILE = "index.faiss"
ARRAYS_FILE = "outcomes.npz"
META_FILE = "meta.json"
LOCK_FILE = ".lock"
_GENERATION = re.compile(r"^gen-(\d{6,})-[0-9a-f]{8}$")


@dataclass(frozen=True)
class GenerationRef:
    """What the manifest says about the current generation (cheap to read, no arrays).

    ``log_end``: the generation holds every log record before this position.
    ``lineage``: kept by generations that are their predecessor plus log records, changed
    by one that holds other content (a rebuild); a process that tails the log can keep
    tailing across the former, and must reload after the latter.
    """

    name: str
    embedder_id: str
    log_end: int
    lineage: str
    meta_sha256: str


@dataclass(frozen=True)
class StoredGeneration:
    ref: GenerationRef
    meta: dict[str, Any]
    blobs: dict[str, bytes]
    where: Path


def sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_bytes(path: Path, data: bytes | memoryview) -> None:
    """Write and fsync one file (the durable step every generation write goes through)."""
    with path.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _replace_file(path: Path, data: bytes) -> None:
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    _write_bytes(temp, data)
    os.replace(temp, path)
    fsync_dir(path.parent)


def _generation_number(name: str) -> int | None:
    match = _GENERATION.match(name)
    return int(match.group(1)) if match else None


def _next_generation_name(directory: Path) -> str:
    numbers = [_generation_number(p.name.removeprefix(".tmp-")) for p in directory.iterdir()]
    latest = max((n for n in numbers if n is not None), default=0)
    return f"gen-{latest + 1:06d}-{secrets.token_hex(4)}"


def remove_stale(directory: Path, *, keep: str) -> None:
    """Delete older generations and leftovers of interrupted writes."""
    for path in directory.iterdir():
        name = path.name
        if name == keep:
            continue
        if _generation_number(name.removeprefix(".tmp-")) is not None and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif name.startswith(f".{MANIFEST_FILE}.") and name.endswith(".tmp"):
            path.unlink(missing_ok=True)


def write_generation(
    directory: Path,
    files: Mapping[str, bytes | memoryview],
    meta: dict[str, Any],
    manifest_fields: Mapping[str, Any],
) -> Path:
    """Stage, fsync and publish a generation (the caller holds the directory lock)."""
    name = _next_generation_name(directory)
    staging = directory / f".tmp-{name}"
    staging.mkdir()
    meta = dict(meta, files={})
    for filename, data in files.items():
        _write_bytes(staging / filename, data)
        meta["files"][filename] = {"bytes": len(data), "sha256": sha256(data)}
    meta_bytes = json.dumps(meta, sort_keys=True).encode()
    _write_bytes(staging / META_FILE, meta_bytes)
    fsync_dir(staging)
    final = directory / name
    os.replace(staging, final)
    fsync_dir(directory)
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "generation": name,
        "meta_sha256": sha256(meta_bytes),
        **manifest_fields,
    }
    _replace_file(directory / MANIFEST_FILE, json.dumps(manifest, indent=2).encode())
    remove_stale(directory, keep=name)
    return final


def read_manifest(directory: Path) -> GenerationRef | None:
    """The current generation, or None when nothing was saved in `directory`."""
    path = directory / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise OutcomeMemoryError(f"cannot read {path}: {exc}; the save is damaged") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise OutcomeMemoryError(f"{path} is not an OutcomeMemory manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise OutcomeMemoryError(
            f"{path} has format_version {version!r}; this emafusion reads up to "
            f"{FORMAT_VERSION}, upgrade it to load this memory"
        )
    generation = manifest.get("generation")
    if not isinstance(generation, str) or _generation_number(generation) is None:
        raise OutcomeMemoryError(f"{path} names a bad generation {generation!r}")
    if not (directory / generation).is_dir():
        raise OutcomeMemoryError(
            f"{path} points at {generation}/, which is missing; the directory was changed "
            "outside OutcomeMemory"
        )
    log_end = manifest.get("log_end", 0)  # version 1 had no log
    if not isinstance(log_end, int) or log_end < 0:
        raise OutcomeMemoryError(f"{path} has a bad log_end {log_end!r}; the save is damaged")
    return GenerationRef(
        name=generation,
        embedder_id=str(manifest.get("embedder_id")),
        log_end=log_end,
        lineage=str(manifest.get("lineage", generation)),
        meta_sha256=str(manifest.get("meta_sha256")),
    )


def read_generation(directory: Path, ref: GenerationRef) -> StoredGeneration:
    generation = directory / ref.name
    meta_bytes = _read_checked(generation / META_FILE, None, ref.meta_sha256)
    try:
        meta = json.loads(meta_bytes)
        blobs = {
            name: _read_checked(generation / name, info["bytes"], info["sha256"])
            for name, info in meta["files"].items()
        }
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise damaged(generation, exc) from exc
    if set(blobs) != {INDEX_FILE, ARRAYS_FILE}:
        raise OutcomeMemoryError(f"{generation} lists files {sorted(blobs)}; it is damaged")
    return StoredGeneration(ref, meta, blobs, generation)


def _read_checked(path: Path, size: int | None, digest: str) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise OutcomeMemoryError(
            f"{path.name} is missing from {path.parent}; the save is damaged, restore it "
            "from a backup or rebuild the memory"
        ) from exc
    if size is not None and len(data) != size:
        raise OutcomeMemoryError(
            f"{path} is truncated or padded: {len(data)} bytes, expected {size}; the save is "
            "damaged, restore it from a backup or rebuild the memory"
        )
    if sha256(data) != digest:
        raise OutcomeMemoryError(f"{path} fails its sha256 check; the save is damaged")
    return data


def damaged(generation: Path, exc: BaseException) -> OutcomeMemoryError:
    return OutcomeMemoryError(
        f"cannot read the memory in {generation}: {exc!r}; the save is damaged, restore it "
        "from a backup or rebuild the memory"
    )


def check_embedder(found: str | None, expected: str | None, directory: str | Path) -> None:
    if expected is not None and found != expected:
        raise OutcomeMemoryError(
            f"the memory in {directory} was built with embedder {found!r}, not {expected!r}; "
            "its vectors are incomparable. Rebuild the memory with the current embedder (or "
            "load it with that embedder)"
        )
