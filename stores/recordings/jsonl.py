"""A user's own recordings: JSON Lines, one `Record` per line.

Every problem names `file:line`, the field, and the fix; `skip_invalid` skips bad lines
and counts them instead. Lines are UTF-8 (a leading byte-order mark is accepted) and end
with "\\n", as the JSON Lines format says.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pydantic import ValidationError

from emafusion.stores.atomic import write_text_atomic
from emafusion.stores.recordings.schema import Record, RecordingError, RecordSet, first_error
from emafusion.stores.recordings.utf8 import NotUTF8Error, decode_utf8

_SKIP_HINT = "Fix: correct that line, or pass --skip-invalid to skip invalid lines and count them."
_NOTES_KEPT = 5


def _parse_line(raw: bytes, lineno: int) -> Record | str | None:
    """The line's record, None for a blank line, or what is wrong with it."""
    # decode_utf8 drops a leading byte-order mark: a file's first line may carry one (and
    # so may the first line of each file in a concatenation).
    try:
        text = decode_utf8(raw, first_line=lineno)
    except NotUTF8Error as exc:
        return f"column {exc.column}: byte 0x{raw[exc.offset : exc.offset + 1].hex()} is not UTF-8"
    if not text.strip():
        return None
    try:
        record = Record.model_validate_json(text)
    except ValidationError as exc:
        return first_error(exc)
    if not record.outcomes:
        # Nothing to learn from and nothing a replay model could answer: a slip, not data.
        return "field 'outcomes': empty; record at least one model's outcome for this query"
    return record


def load_jsonl(path: Path, skip_invalid: bool = False) -> RecordSet:
    """A user's recordings, one `Record` per line; errors name the line and field."""
    path = Path(path)
    if not path.is_file():
        raise RecordingError(
            f"{path}: no such file. Fix: pass an existing --recordings FILE.jsonl."
        )
    records: list[Record] = []
    line_of: dict[str, int] = {}
    skipped = 0
    notes: list[str] = []
    try:
        with path.open("rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                parsed = _parse_line(raw, lineno)
                if parsed is None:
                    continue
                if isinstance(parsed, str):
                    message = f"{path}:{lineno}: {parsed}"
                    if not skip_invalid:
                        raise RecordingError(f"{message}. {_SKIP_HINT}")
                    skipped += 1
                    if len(notes) < _NOTES_KEPT:
                        notes.append(f"skipped {message}")
                    continue
                if parsed.id in line_of:
                    # Never skipped: two records of one query disagree, and dropping
                    # either would lose outcomes silently.
                    raise RecordingError(
                        f"{path}:{lineno}: duplicate record ids: {parsed.id!r} is also on line "
                        f"{line_of[parsed.id]}. Fix: give every query a unique id (merge the "
                        f"outcomes of one query into one line)."
                    )
                line_of[parsed.id] = lineno
                records.append(parsed)
    except OSError as exc:
        raise RecordingError(
            f"{path}: cannot be read ({exc.strerror or exc}). Fix: check the file's "
            f"permissions and the disk."
        ) from exc
    if not records:
        raise _no_records(path, skipped, notes)
    name = records[0].dataset if len({r.dataset for r in records}) == 1 else path.stem
    return RecordSet(name, records, source=str(path), skipped=skipped, notes=notes)


def _no_records(path: Path, skipped: int, notes: list[str]) -> RecordingError:
    if skipped:
        first = notes[0].removeprefix("skipped ")
        return RecordingError(
            f"{path}: none of its {skipped} lines is a valid record (first: {first}). "
            f"Fix: write one Record per line (fields id, dataset, category, query, "
            f"reference, outcomes; see the README)."
        )
    return RecordingError(
        f"{path}:1: no records: the file is empty or blank. Fix: write one Record per line "
        f"(fields id, dataset, category, query, reference, outcomes; see the README), or "
        f"pass the file that holds your recordings."
    )


def write_jsonl(records: Iterable[Record], path: Path) -> int:
    """Write records atomically (temporary file, then rename); returns the count."""
    lines = [record.model_dump_json() + "\n" for record in records]
    write_text_atomic(path, "".join(lines))
    return len(lines)
