"""Parsed recordings, cached: a second load of the same files skips unzipping, JSON/CSV
parsing and validation (MMLU-Pro: 13 zips, 155k rows, most of a replayed `emafusion ask`).

The cache is a derived file of the one mechanism every derived file uses
(`emafusion.stores.cached_file`: built under a lock, written atomically, its manifest's
size and sha256 checked on every read), under ``<cache dir>/recordings/``. Its key, kept
in the manifest and in the file's own header, is the sha256 over

* every input file's resolved path, size, mtime_ns and sha256 (the published files are
  checked against their published sha256 before; the hash is memoized per process),
* the loader and its options (``skip_invalid``),
* the code that parses them (the source of the recordings modules), the cache format,
  and the Python and pydantic versions.

Any change makes a new key, and a cache of another key is rebuilt in place. The payload
is a pickle of plain tuples, strings and numbers only, read back by an unpickler that
refuses every class, behind a header naming its format and key: a damaged, truncated or
foreign file is rebuilt (with a one-line warning), never used. Where the cache cannot be
written (read-only cache dir, a lock held too long), the recordings are parsed as before.
``EMAFUSION_RECORDINGS_CACHE=0`` turns the cache off; ``EMAFUSION_RECORDINGS_CACHE_DIR``
puts it elsewhere.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import io
import json
import logging
import os
import pickle
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pydantic
import pydantic_core

from emafusion.stores.cached_file import build_cached_file, manifest_path, read_cached_file
from emafusion.stores.embedding_base import default_cache_dir
from emafusion.stores.recordings.download import sha256_of
from emafusion.stores.recordings.schema import Outcome, Record, RecordSet

logger = logging.getLogger(__name__)

CACHE_ENV = "EMAFUSION_RECORDINGS_CACHE"
CACHE_DIR_ENV = "EMAFUSION_RECORDINGS_CACHE_DIR"
# A cache of the same inputs made by other code (another checkout, an older version) is
# removed once a new one is built, if it was not rebuilt for this long.
STALE_SIBLING_S = 86_400.0
# Bump when the payload's layout changes (the code fingerprint covers the loaders' source).
CACHE_FORMAT = 1
_MAGIC = b"EMAFUSION-RECORDINGS\n"
# The modules whose source decides what a load gives: any edit invalidates every cache.
_CODE_MODULES = ("schema", "mmlu_pro", "routerbench", "jsonl", "utf8", "cache")
_RECORD_FIELDS = ("id", "dataset", "category", "query", "reference", "outcomes")
_OUTCOME_FIELDS = ("response", "score", "cost_usd", "input_tokens", "output_tokens")


class CacheDecodeError(ValueError):
    """A cache file that is not a whole payload of this format and key."""


def cache_enabled(env: dict[str, str] | None = None) -> bool:
    value = (os.environ if env is None else env).get(CACHE_ENV, "").strip().lower()
    return value not in ("0", "false", "no", "off")


def recordings_cache_dir() -> Path:
    """``$EMAFUSION_RECORDINGS_CACHE_DIR``, else ``<cache dir>/recordings``."""
    override = os.environ.get(CACHE_DIR_ENV, "").strip()
    return Path(override).expanduser() if override else default_cache_dir() / "recordings"


_code_fingerprint: str | None = None


def code_fingerprint() -> str:
    """sha256 of the recordings modules' source, the cache format and the library versions."""
    global _code_fingerprint
    if _code_fingerprint is None:
        here = Path(__file__).resolve().parent
        digest = hashlib.sha256()
        answers = here.parent / "answers.py"  # LETTERS and extract_choice shape records too
        for path in [*(here / f"{name}.py" for name in _CODE_MODULES), answers]:
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        versions = (
            CACHE_FORMAT,
            sys.version_info[:2],
            pydantic.VERSION,
            pydantic_core.__version__,
            pickle.HIGHEST_PROTOCOL,
        )
        digest.update(repr(versions).encode())
        _code_fingerprint = digest.hexdigest()
    return _code_fingerprint


def _input_identity(path: Path) -> dict[str, Any]:
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return {
        "path": str(resolved),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "sha256": sha256_of(resolved),
    }


def cache_key(kind: str, files: Sequence[Path], options: dict[str, Any]) -> tuple[str, Path]:
    """(key, cache file) of loading ``files`` with loader ``kind`` and ``options``.

    The file is named by the inputs' paths and the code: a changed input rebuilds it in
    place instead of leaving the old one behind, and two checkouts of different code
    reading the same files keep a cache each instead of rebuilding each other's."""
    inputs = [_input_identity(path) for path in files]
    code = code_fingerprint()
    identity = {"kind": kind, "options": options, "inputs": inputs, "code": code}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    where = json.dumps([kind, [i["path"] for i in inputs], options], sort_keys=True)
    name = f"{kind}-{hashlib.sha256(where.encode()).hexdigest()[:16]}-{code[:8]}.pickle"
    return key, recordings_cache_dir() / name


def _remove_stale_siblings(path: Path) -> None:
    """Caches of the same inputs by other code, not rebuilt for a day (best effort)."""
    prefix = path.name.rsplit("-", 1)[0]
    now = time.time()
    for sibling in path.parent.glob(f"{prefix}-*.pickle"):
        if sibling == path:
            continue
        try:
            if now - sibling.stat().st_mtime > STALE_SIBLING_S:
                manifest_path(sibling).unlink(missing_ok=True)
                sibling.unlink(missing_ok=True)
                Path(str(sibling) + ".lock").unlink(missing_ok=True)
        except OSError:
            continue


# --------------------------------------------------------------------------------------------
# The payload: plain tuples, written by this module only
# --------------------------------------------------------------------------------------------


def encode(records: RecordSet, key: str) -> bytes:
    fields_sets: dict[tuple[str, ...], int] = {}

    def fs_index(model: pydantic.BaseModel) -> int:
        return fields_sets.setdefault(tuple(sorted(model.model_fields_set)), len(fields_sets))

    rows = [
        (
            r.id,
            r.dataset,
            r.category,
            r.query,
            r.reference,
            fs_index(r),
            tuple(
                (
                    m,
                    o.response,
                    o.score,
                    o.cost_usd,
                    o.input_tokens,
                    o.output_tokens,
                    fs_index(o),
                )
                for m, o in r.outcomes.items()
            ),
        )
        for r in records.records
    ]
    payload = {
        "format": CACHE_FORMAT,
        "key": key,
        "record_fields": tuple(Record.model_fields),
        "outcome_fields": tuple(Outcome.model_fields),
        "name": records.name,
        "source": records.source,
        "skipped": records.skipped,
        "notes": list(records.notes),
        "published_row_cost_per_1k": dict(records.published_row_cost_per_1k),
        "fields_sets": list(fields_sets),
        "records": rows,
    }
    header = _MAGIC + json.dumps({"format": CACHE_FORMAT, "key": key}).encode() + b"\n"
    return header + pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)


class _PlainUnpickler(pickle.Unpickler):
    """Builtin containers, strings and numbers only: no class is ever looked up."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"the recordings cache holds no objects ({module}.{name})")


def _fast_construct(cls: type[pydantic.BaseModel]) -> bool:
    """Whether instances can be made as `model_construct` makes them, minus its per-field
    loop (no post-init hook, no private attributes, no extra fields)."""
    return (
        not cls.__pydantic_post_init__
        and not cls.__private_attributes__
        and cls.model_config.get("extra") != "allow"
        and not cls.__pydantic_root_model__
    )


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """The cyclic collector paused while ~170k objects are made (none is garbage yet):
    it would otherwise walk them again and again, for a third of the load's time."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def decode(data: bytes, key: str) -> RecordSet:
    """The RecordSet in a cache file's bytes; CacheDecodeError unless whole and of ``key``."""
    with _no_gc():
        return _decode(data, key)


def _decode(data: bytes, key: str) -> RecordSet:
    try:
        if not data.startswith(_MAGIC):
            raise CacheDecodeError("not a recordings cache file")
        header_end = data.index(b"\n", len(_MAGIC))
        header = json.loads(data[len(_MAGIC) : header_end])
        if header != {"format": CACHE_FORMAT, "key": key}:
            raise CacheDecodeError(f"header {header} is not of this format and key")
        payload = _PlainUnpickler(io.BytesIO(data[header_end + 1 :])).load()
        if not isinstance(payload, dict) or payload.get("key") != key:
            raise CacheDecodeError("the payload is not of this key")
        if payload.get("format") != CACHE_FORMAT:
            raise CacheDecodeError(f"payload format {payload.get('format')!r}")
        fields = (tuple(Record.model_fields), tuple(Outcome.model_fields))
        if (payload["record_fields"], payload["outcome_fields"]) != fields or fields != (
            _RECORD_FIELDS,
            _OUTCOME_FIELDS,
        ):
            raise CacheDecodeError("written for other Record/Outcome fields")
        return RecordSet(
            payload["name"],
            _records(payload["records"], [tuple(fs) for fs in payload["fields_sets"]]),
            source=payload["source"],
            skipped=payload["skipped"],
            notes=list(payload["notes"]),
            published_row_cost_per_1k=dict(payload["published_row_cost_per_1k"]),
        )
    except CacheDecodeError:
        raise
    except Exception as exc:  # anything a damaged payload raises: never used, rebuilt
        raise CacheDecodeError(f"{exc.__class__.__name__}: {exc}") from exc


def _records(rows: list[Any], fields_sets: list[tuple[str, ...]]) -> list[Record]:
    # The values were validated when the cache was written (and its sha256 checked on this
    # read): instances are made as model_construct makes them, without validating again.
    if not (_fast_construct(Record) and _fast_construct(Outcome)):
        return [
            Record.model_construct(
                set(fields_sets[rfs]),
                id=i,
                dataset=d,
                category=c,
                query=q,
                reference=ref,
                outcomes={
                    m: Outcome.model_construct(
                        set(fields_sets[ofs]),
                        response=resp,
                        score=s,
                        cost_usd=cost,
                        input_tokens=tin,
                        output_tokens=tout,
                    )
                    for m, resp, s, cost, tin, tout, ofs in outs
                },
            )
            for i, d, c, q, ref, rfs, outs in rows
        ]
    new, setattr_ = object.__new__, object.__setattr__
    # Outcomes are frozen: one fields-set object per distinct set is shared safely.
    outcome_sets = [set(fs) for fs in fields_sets]

    def outcome(values: dict[str, Any], fields_set: set[str]) -> Outcome:
        o = new(Outcome)
        setattr_(o, "__dict__", values)
        setattr_(o, "__pydantic_fields_set__", fields_set)
        setattr_(o, "__pydantic_extra__", None)
        setattr_(o, "__pydantic_private__", None)
        return o

    records = []
    for i, d, c, q, ref, rfs, outs in rows:
        r = new(Record)
        setattr_(
            r,
            "__dict__",
            {
                "id": i,
                "dataset": d,
                "category": c,
                "query": q,
                "reference": ref,
                "outcomes": {
                    m: outcome(
                        {
                            "response": resp,
                            "score": s,
                            "cost_usd": cost,
                            "input_tokens": tin,
                            "output_tokens": tout,
                        },
                        outcome_sets[ofs],
                    )
                    for m, resp, s, cost, tin, tout, ofs in outs
                },
            },
        )
        setattr_(r, "__pydantic_fields_set__", set(fields_sets[rfs]))  # records are mutable
        setattr_(r, "__pydantic_extra__", None)
        setattr_(r, "__pydantic_private__", None)
        records.append(r)
    return records


# --------------------------------------------------------------------------------------------
# Loading through the cache
# --------------------------------------------------------------------------------------------


def cached_load(
    kind: str,
    files: Sequence[Path],
    load: Callable[[], RecordSet],
    options: dict[str, Any] | None = None,
) -> RecordSet:
    """``load()``'s RecordSet, from the cache when it holds one for exactly these inputs.

    Errors of the loader (a damaged recording) are raised as they are and never cached;
    problems of the cache itself fall back to ``load()`` and are logged in one line."""
    options = dict(options or {})
    if not cache_enabled():
        return load()
    try:
        key, path = cache_key(kind, files, options)
    except OSError:
        return load()  # an unreadable input: the loader names it and the fix
    expect = {"key": key}
    data = read_cached_file(path, expect)
    unusable = None
    if data is not None:
        try:
            return decode(data, key)
        except CacheDecodeError as exc:
            unusable = f"damaged ({exc})"
    built: list[RecordSet] = []

    def build() -> tuple[bytes, dict[str, Any]]:
        records = load()
        built.append(records)
        return encode(records, key), {"kind": "recordings", "loader": kind, "records": len(records)}

    try:
        build_cached_file(
            path,
            build,
            "caching parsed recordings",
            f"{kind}, {len(files)} files",
            expect=expect,
            lock_timeout_s=120.0,
            unusable=unusable,
        )
    except OSError as exc:  # read-only cache dir, full disk, a lock held too long
        logger.warning("recordings cache %s not written (%s); parsed without it", path, exc)
        return built[0] if built else load()
    if built:
        _remove_stale_siblings(path)
        return built[0]
    # A racing process built it while this one waited for the lock.
    data = read_cached_file(path, expect)
    if data is not None:
        try:
            return decode(data, key)
        except CacheDecodeError:
            pass
    return load()
