"""Derived files cached on disk: built once under a lock, written atomically, used only whole.

One mechanism for every file the project derives from something else and keeps in the
user cache (the ONNX exports and the static table of `emafusion.stores.onnx_export` and
`emafusion.stores.static_table`, the parsed recordings of
`emafusion.stores.recordings.cache`)::

    <file>        the derived bytes
    <file>.json   its manifest: format, size, sha256, and fields of the caller's own

How it stays safe:

* The file is written atomically (`write_bytes_atomic`) and its manifest after it; the old
  manifest is removed first. An interrupted build leaves either nothing or a file without a
  manifest, and a file without a matching manifest is never used.
* A file whose size or sha256 differs from its manifest (damaged, truncated, replaced), or
  whose manifest lacks a field the caller expects (`expect`: e.g. the key of the inputs it
  was derived from), is rebuilt, with a one-line warning naming it.
* Processes racing to build the same file take a file lock; the losers wait and then use
  the winner's file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from emafusion.stores.atomic import write_bytes_atomic, write_text_atomic

logger = logging.getLogger(__name__)

MANIFEST_FORMAT = 1
DEFAULT_LOCK_TIMEOUT_S = 900.0

_verified_lock = threading.Lock()
_verified: dict[tuple[str, int, int], str] = {}


def manifest_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _sha256_file(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _read_manifest(path: Path, expect: Mapping[str, Any] | None) -> tuple[dict[str, Any], str]:
    """(manifest, problem): problem is "" when the manifest is usable for `expect`."""
    meta = manifest_path(path)
    if not meta.is_file():
        return {}, f"no manifest {meta.name} (a build that did not finish)"
    try:
        manifest = json.loads(meta.read_text())
        if not isinstance(manifest, dict):
            return {}, f"manifest {meta.name} is not a JSON object"
        str(manifest["sha256"]), int(manifest["size"])
        if manifest.get("format") != MANIFEST_FORMAT:
            return {}, f"manifest {meta.name} has format {manifest.get('format')!r}"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return {}, f"unreadable manifest {meta.name} ({exc})"
    for name, value in (expect or {}).items():
        if manifest.get(name) != value:
            return {}, f"made from other inputs ({name} differs: stale)"
    return manifest, ""


def cached_file_problem(path: Path, expect: Mapping[str, Any] | None = None) -> str | None:
    """Why the cached file at ``path`` must not be used, or None when it is whole.

    Whole means: a manifest of this format exists, holds every field of ``expect`` with
    that value, and the file's size and sha256 match it. The hash is memoized per process
    on (size, mtime), so a second check is free.
    """
    if not path.is_file():
        return "missing"
    manifest, problem = _read_manifest(path, expect)
    if problem:
        return problem
    expected_sha, expected_size = str(manifest["sha256"]), int(manifest["size"])
    stat = path.stat()
    if stat.st_size != expected_size:
        return f"size {stat.st_size} bytes, manifest says {expected_size}"
    memo_key = (str(path), stat.st_size, stat.st_mtime_ns)
    with _verified_lock:
        sha = _verified.get(memo_key)
    if sha is None:
        sha = _sha256_file(path)
        with _verified_lock:
            _verified[memo_key] = sha
    if sha != expected_sha:
        return f"sha256 {sha[:12]}... differs from the manifest's {expected_sha[:12]}... (damaged)"
    return None


def read_cached_file(path: Path, expect: Mapping[str, Any] | None = None) -> bytes | None:
    """The whole file's bytes, checked against its manifest in the same read; None when
    it is missing or must not be used (a file replaced meanwhile is read whole or not)."""
    manifest, problem = _read_manifest(path, expect)
    if problem:
        return None
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if len(data) != int(manifest["size"]):
        return None
    if hashlib.sha256(data).hexdigest() != str(manifest["sha256"]):
        return None
    return data


def build_cached_file(
    path: Path,
    build: Callable[[], tuple[bytes, dict[str, Any]]],
    verb: str,
    why: str,
    *,
    expect: Mapping[str, Any] | None = None,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    unusable: str | None = None,
) -> Path:
    """A derived file, built once per cache dir under a lock: unless a whole one is there
    (a racing process may have built it meanwhile), `build` gives its bytes and its
    manifest's own fields (`expect`'s fields are added). The manifest goes first (removed)
    and last (written): no manifest, no use. `unusable`: why the caller could not use the
    whole file it found (its content is wrong in a way no manifest sees): rebuilt anyway."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=lock_timeout_s):
        problem = unusable or cached_file_problem(path, expect)
        if problem is None:
            return path
        if problem != "missing":
            logger.warning("rebuilding %s: %s", path, problem)
        _remove_leftovers(path)
        logger.info("%s %s once (%s)", verb, path, why)
        started = time.perf_counter()
        data, fields = build()
        manifest_path(path).unlink(missing_ok=True)
        write_bytes_atomic(path, data)
        manifest = {
            "format": MANIFEST_FORMAT,
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
            **fields,
            **(expect or {}),
            "built_at": time.time(),
            "build_seconds": round(time.perf_counter() - started, 1),
        }
        write_text_atomic(manifest_path(path), json.dumps(manifest, indent=2, sort_keys=True))
        logger.info("built %s in %.0f s", path, manifest["build_seconds"])
    return path


def _remove_leftovers(path: Path) -> None:
    """Temporary files and folders of builds that crashed (we hold the lock: none is live)."""
    for leftover in path.parent.glob(f".{path.name}.*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
