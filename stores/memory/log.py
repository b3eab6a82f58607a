"""The outcome log: append-only segments of checksummed records, shared by many processes.

Layout, in ``<memory dir>/log/``::

    .lock                          flock: appends exclusive, reads shared
    seg-00000000000000000000.log   a segment: a header, then records
    seg-00000000000000041234.log   the next one starts where the previous one ended

Every record has a *position*: its segment's start plus its byte offset in the segment
file. Positions only grow (a new segment starts at the previous one's end, also after old
segments are deleted), so a position is a sequence number: a generation stores the position
up to which it holds the log, and a reader tails the log from the position it has read to.

A segment file starts with ``SEGMENT_MAGIC``, a little-endian u32 length, that many bytes of
JSON (format, version, embedder_id, dim, start) and the CRC-32 of the JSON. Segments are
created complete (written to a temporary name, fsynced, renamed), so a header never tears.

A record is a 16-byte frame header (``RECORD_MAGIC``, payload length, CRC-32 of the payload,
CRC-32 of the first 12 bytes) and the payload: JSON of the entry, then its vector as
``dim`` little-endian float32. One batch is written with one ``write`` and fsynced before
`append` returns, under the exclusive lock. A writer killed mid-append leaves a torn frame at
the end of the segment; readers (holding the shared lock, so no writer is mid-append) drop
it and count it, and the next appender starts a new segment after it instead of writing
behind garbage. A record whose frame is intact but whose payload fails its checksum is
skipped and counted; the records after it are kept.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import struct
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emafusion.stores.atomic import fsync_dir

from .filelock import file_lock
from .records import LogEntry, OutcomeMemoryError, OutcomeRecord

LOG_DIR = "log"
LOG_LOCK = ".lock"
LOG_FORMAT = "emafusion-outcome-log"
LOG_VERSION = 1
SEGMENT_MAGIC = b"EFMEMLOG"
RECORD_MAGIC = 0x52434645  # b"EFCR" little-endian
_FRAME = struct.Struct("<IIII")
_HEADER_LEN = struct.Struct("<I")
MAX_RECORD_BYTES = 64 << 20
MAX_SEGMENT_BYTES = 64 << 20  # an appender starts a new segment past this size
_SEGMENT = re.compile(r"^seg-(\d{20})\.log$")

_write = os.write  # the one call that puts a batch on disk (tests stall it to tear a record)
_sync = getattr(os, "fdatasync", os.fsync)


@dataclass
class LogRead:
    """What a read of the log found: entries with their positions, where to read on from,
    and what was dropped (torn or corrupt records, with their files)."""

    entries: list[tuple[int, LogEntry]] = field(default_factory=list)
    end: int = 0
    dropped: int = 0
    dropped_bytes: int = 0
    damaged: list[str] = field(default_factory=list)


def segment_name(start: int) -> str:
    return f"seg-{start:020d}.log"


def encode_entry(entry: LogEntry) -> bytes:
    outcomes = [
        [o.model, o.score, o.source, o.cost_usd, o.latency_s, o.timestamp] for o in entry.outcomes
    ]
    doc = {"q": entry.query_id, "c": entry.category, "l": entry.category_is_label, "o": outcomes}
    text = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    payload = text + np.ascontiguousarray(entry.vector, dtype="<f4").tobytes()
    head = struct.pack("<III", RECORD_MAGIC, len(payload), zlib.crc32(payload))
    return head + struct.pack("<I", zlib.crc32(head)) + payload


def decode_entry(payload: bytes, dim: int) -> LogEntry:
    """An entry from a checksummed payload; raises ValueError/TypeError/KeyError if it is
    not one (the caller counts it as corrupt)."""
    split = len(payload) - 4 * dim
    if split <= 0:
        raise ValueError("payload shorter than its vector")
    doc = json.loads(payload[:split])
    vector = np.frombuffer(payload[split:], dtype="<f4").astype(np.float32)
    outcomes = tuple(
        OutcomeRecord(model=m, score=s, source=src, cost_usd=c, latency_s=lat, timestamp=ts)
        for m, s, src, c, lat, ts in doc["o"]
    )
    category = doc["c"]
    if not isinstance(doc["q"], str) or not (category is None or isinstance(category, str)):
        raise TypeError("bad query id or category")
    return LogEntry(doc["q"], vector, outcomes, category, category_is_label=bool(doc["l"]))


class OutcomeLog:
    """The segments of one memory directory, for one embedder and dimension."""

    def __init__(self, directory: Path, embedder_id: str, dim: int) -> None:
        self.directory = Path(directory)
        self.embedder_id = embedder_id
        self.dim = dim
        self._lock = threading.Lock()
        self._headers: dict[int, int] = {}  # segment start -> header length (validated)
        self._verified: dict[int, int] = {}  # segment start -> file length parsed cleanly

    @property
    def lock_path(self) -> Path:
        return self.directory / LOG_LOCK

    # ---------------------------------------------------------------- segments

    def segments(self) -> list[int]:
        """Start positions of the segments on disk, ascending."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        starts = [int(m.group(1)) for m in map(_SEGMENT.match, names) if m]
        return sorted(starts)

    def _path(self, start: int) -> Path:
        return self.directory / segment_name(start)

    def _header_length(self, start: int, fd: int) -> int:
        """Validate a segment's header once; its length (records start after it)."""
        known = self._headers.get(start)
        if known is not None:
            return known
        path = self._path(start)
        fix = (
            "restore the file from a backup, or move it out of the log directory to give up "
            "the outcomes it holds"
        )
        head = os.pread(fd, len(SEGMENT_MAGIC) + 4, 0)
        if len(head) < len(SEGMENT_MAGIC) + 4 or head[: len(SEGMENT_MAGIC)] != SEGMENT_MAGIC:
            raise OutcomeMemoryError(f"{path} is not an outcome-log segment (bad magic); {fix}")
        (length,) = _HEADER_LEN.unpack(head[len(SEGMENT_MAGIC) :])
        body = os.pread(fd, length + 4, len(head)) if length <= 1 << 16 else b""
        if (
            len(body) != length + 4
            or zlib.crc32(body[:length]) != _HEADER_LEN.unpack(body[length:])[0]
        ):
            raise OutcomeMemoryError(f"{path} has a damaged header (checksum fails); {fix}")
        try:
            header = json.loads(body[:length])
            kind, version = header["format"], header["version"]
            embedder_id, dim, begin = header["embedder_id"], header["dim"], header["start"]
        except (ValueError, KeyError, TypeError) as exc:
            raise OutcomeMemoryError(f"{path} has a damaged header ({exc!r}); {fix}") from exc
        if kind != LOG_FORMAT or not isinstance(version, int) or version > LOG_VERSION:
            raise OutcomeMemoryError(
                f"{path} is {kind!r} version {version!r}; this emafusion reads "
                f"{LOG_FORMAT!r} up to version {LOG_VERSION}, upgrade it to read this log"
            )
        if embedder_id != self.embedder_id or dim != self.dim:
            raise OutcomeMemoryError(
                f"{path} holds outcomes of embedder {embedder_id!r} ({dim}-d vectors), but "
                f"the memory is of embedder {self.embedder_id!r} ({self.dim}-d); its vectors "
                "are incomparable. Move the segment out of the log directory (or load it "
                "with the memory it was written for)"
            )
        if begin != start:
            raise OutcomeMemoryError(
                f"{path} says it starts at {begin}, its name says {start}; the file was "
                f"renamed outside emafusion. {fix}"
            )
        self._headers[start] = len(head) + length + 4
        return self._headers[start]

    def _create(self, start: int) -> None:
        """Write a complete, empty segment starting at `start` (under the exclusive lock)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        header = json.dumps(
            {
                "format": LOG_FORMAT,
                "version": LOG_VERSION,
                "embedder_id": self.embedder_id,
                "dim": self.dim,
                "start": start,
            },
            sort_keys=True,
        ).encode()
        data = SEGMENT_MAGIC + _HEADER_LEN.pack(len(header)) + header
        data += _HEADER_LEN.pack(zlib.crc32(header))
        temp = self.directory / f".{segment_name(start)}.{secrets.token_hex(4)}.tmp"
        with temp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, self._path(start))
        fsync_dir(self.directory)
        self._headers[start] = len(data)
        self._verified[start] = len(data)

    # ---------------------------------------------------------------- reading

    def _scan(self, start: int, offset: int | None, read: LogRead) -> tuple[int, bool]:
        """Parse one segment from file `offset` (None: its first record) into `read`.

        Returns (file length, clean): clean is False when the segment ends in a torn or
        unparseable frame, which is dropped and counted.
        """
        path = self._path(start)
        fd = os.open(path, os.O_RDONLY)
        try:
            first = self._header_length(start, fd)
            pos = first if offset is None else max(offset, first)
            size = os.fstat(fd).st_size
            data = os.pread(fd, size - pos, pos) if size > pos else b""
        finally:
            os.close(fd)
        at, clean = 0, True
        while at < len(data):
            frame = data[at : at + _FRAME.size]
            magic, length, crc, head_crc = (
                _FRAME.unpack(frame) if len(frame) == _FRAME.size else (0, 0, 0, 0)
            )
            if (
                len(frame) < _FRAME.size
                or magic != RECORD_MAGIC
                or zlib.crc32(frame[:12]) != head_crc
                or length > MAX_RECORD_BYTES
                or at + _FRAME.size + length > len(data)
            ):
                # A torn tail (or a damaged frame): nothing after it can be framed.
                read.dropped += 1
                read.dropped_bytes += len(data) - at
                read.damaged.append(str(path))
                clean = False
                break
            payload = data[at + _FRAME.size : at + _FRAME.size + length]
            try:
                if zlib.crc32(payload) != crc:
                    raise ValueError("payload checksum fails")
                entry = decode_entry(payload, self.dim)
            except (ValueError, TypeError, KeyError, OutcomeMemoryError):
                read.dropped += 1
                read.dropped_bytes += _FRAME.size + length
                read.damaged.append(str(path))
            else:
                read.entries.append((start + pos + at, entry))
            at += _FRAME.size + length
        return size, clean

    def read_since(self, position: int) -> LogRead:
        """Entries at positions >= `position`, in order (holds the shared lock)."""
        with self._lock, file_lock(self.lock_path, exclusive=False):
            return self._read_locked(position)

    def _read_locked(self, position: int) -> LogRead:
        read = LogRead(end=position)
        starts = self.segments()
        for i, start in enumerate(starts):
            following = starts[i + 1] if i + 1 < len(starts) else None
            if following is not None and following <= position:
                continue
            size, clean = self._scan(start, position - start if position > start else None, read)
            if clean:
                self._verified[start] = size
            # Past a torn tail the next record position is the file's end: that is where
            # the next appender starts a new segment.
            read.end = max(read.end, start + size)
        return read

    # ---------------------------------------------------------------- writing

    def append(self, entries: Sequence[LogEntry], floor: Callable[[], int]) -> list[int]:
        """Write `entries` as one fsynced batch; their positions. `floor()` is the lowest
        position a first segment may start at (the current generation's log end); it is
        only asked when the log has no segment."""
        frames = [encode_entry(e) for e in entries]
        if not frames:
            return []
        blob = b"".join(frames)
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            with file_lock(self.lock_path, exclusive=True):
                start = self._active_segment(floor, len(blob))
                path = self._path(start)
                fd = os.open(path, os.O_WRONLY | os.O_APPEND)
                try:
                    offset = os.fstat(fd).st_size
                    try:
                        self._write_all(fd, blob)
                        _sync(fd)
                    except BaseException:
                        os.ftruncate(fd, offset)  # leave no partial batch behind
                        raise
                finally:
                    os.close(fd)
                self._verified[start] = offset + len(blob)
        positions, at = [], start + offset
        for frame in frames:
            positions.append(at)
            at += len(frame)
        return positions

    @staticmethod
    def _write_all(fd: int, blob: bytes) -> None:
        view = memoryview(blob)
        while view:
            written = _write(fd, view)
            view = view[written:]

    def _active_segment(self, floor: Callable[[], int], incoming: int) -> int:
        """The segment to append to, starting a new one after a torn tail, past the size
        limit, or when there is none (under the exclusive lock)."""
        starts = self.segments()
        if not starts:
            first = floor()
            self._create(first)
            return first
        start = starts[-1]
        size = self._path(start).stat().st_size
        verified = self._verified.get(start)
        if verified != size:
            check = LogRead()
            size, clean = self._scan(start, verified, check)
            if not clean:
                self._create(start + size)
                return start + size
            self._verified[start] = size
        if size + incoming > MAX_SEGMENT_BYTES and size > self._headers[start]:
            self._create(start + size)
            return start + size
        return start

    def seal(self, position: int, floor: int = 0) -> LogRead:
        """Read everything from `position` and start a new segment at the end, so that the
        returned ``end`` separates what a new generation holds from later appends.

        An empty last segment is kept as it is: ``end`` is then its start.
        """
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            with file_lock(self.lock_path, exclusive=True):
                read = self._read_locked(position)
                starts = self.segments()
                if not starts:
                    end = max(floor, position)
                    self._create(end)
                else:
                    last = starts[-1]
                    size = self._path(last).stat().st_size
                    if size <= self._headers.get(last, size) and read.end <= last + size:
                        end = last
                    else:
                        end = last + size
                        self._create(end)
                read.end = end
                return read

    def discard_before(self, position: int) -> None:
        """Delete segments that lie wholly before `position` (held by a generation)."""
        with self._lock, file_lock(self.lock_path, exclusive=True):
            starts = self.segments()
            for i, start in enumerate(starts):
                following = starts[i + 1] if i + 1 < len(starts) else None
                if following is not None and following <= position:
                    self._path(start).unlink(missing_ok=True)
                    self._headers.pop(start, None)
                    self._verified.pop(start, None)
            for stale in self.directory.glob(".seg-*.tmp"):
                stale.unlink(missing_ok=True)
            fsync_dir(self.directory)
