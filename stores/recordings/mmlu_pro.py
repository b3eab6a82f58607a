"""The MMLU-Pro recordings: one zip per model, holding one JSON list of question records.

Each list entry that is a record is checked against `MmluProRow` before use, so a damaged
or foreign file fails with the file, the entry and the field, never with a KeyError.
"""

from __future__ import annotations

import lzma
import re
import struct
import zipfile
import zlib
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from emafusion.stores.answers import LETTERS
from emafusion.stores.recordings.schema import (
    Outcome,
    Record,
    RecordingError,
    RecordSet,
    first_error,
)

_MMLU_FILE = re.compile(r"model_outputs_(?P<model>.+)_5shots\.zip$")
_REFETCH = "Fix: delete it and run `emafusion data fetch --dataset mmlu-pro`."
# What reading a damaged or foreign archive can raise, beyond BadZipFile: truncated or
# corrupt members (zlib/lzma/EOF/struct), encrypted ones (RuntimeError), methods Python
# lacks (NotImplementedError), nonsense offsets (ValueError, OverflowError).
_ARCHIVE_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    OSError,
    EOFError,
    RuntimeError,
    NotImplementedError,
    ValueError,
    OverflowError,
    zlib.error,
    lzma.LZMAError,
    struct.error,
)


class MmluProRow(BaseModel):
    """The fields of one published record that the loader reads (others are ignored)."""

    model_config = ConfigDict(extra="ignore")

    question_id: int
    question: str
    options: list[str] = Field(max_length=len(LETTERS))
    answer: str
    category: str
    pred: Any = None  # the extracted letter, or null: compared with `answer`, never parsed


def mmlu_pro_query(question: str, options: list[str]) -> str:
    """Zero-shot: the question, then lettered options (A., B., ...)."""
    lines = [question.strip()]
    lines += [f"{LETTERS[i]}. {str(option).strip()}" for i, option in enumerate(options)]
    return "\n".join(lines)


def _archive_json(path: Path) -> tuple[str, bytes]:
    """(member name, bytes) of the one .json inside the zip at `path`."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = [n for n in archive.namelist() if n.endswith(".json")]
            if len(members) != 1:
                raise RecordingError(
                    f"{path}: expected one .json inside, found {len(members)}. {_REFETCH}"
                )
            return members[0], archive.read(members[0])
    except _ARCHIVE_ERRORS as exc:
        raise RecordingError(
            f"{path}: not a readable zip ({exc.__class__.__name__}: {exc}). {_REFETCH}"
        ) from exc


def _short(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _zip_entries(path: Path) -> tuple[str, list[tuple[int, dict[str, Any]]], int]:
    """(model, (list position, record) pairs, count of entries that are not records)."""
    path = Path(path)
    match = _MMLU_FILE.search(path.name)
    if not match:
        raise RecordingError(
            f"{path}: expected a file named model_outputs_<MODEL>_5shots.zip. Fix: keep the "
            f"published file names."
        )
    member, data = _archive_json(path)
    try:
        # pydantic's parser, not json: it refuses lone surrogates ("\ud800") that could
        # never be written back out, and reports nesting too deep as an error, not a crash.
        payload = pydantic_core.from_json(data)
    except ValueError as exc:
        raise RecordingError(
            f"{path}, member {member}: the JSON inside is invalid ({exc}). {_REFETCH}"
        ) from exc
    if not isinstance(payload, list):
        raise RecordingError(
            f"{path}, member {member}: expected a JSON list of records, found "
            f"{type(payload).__name__}. {_REFETCH}"
        )
    records = [(i, d) for i, d in enumerate(payload) if isinstance(d, dict) and "question_id" in d]
    return match.group("model"), records, len(payload) - len(records)


def read_mmlu_pro_zip(path: Path) -> tuple[str, list[dict[str, Any]], int]:
    """(model name, records, count of list entries that are not records) of one zip."""
    model, entries, non_records = _zip_entries(path)
    return model, [row for _, row in entries], non_records


def _checked_row(row: dict[str, Any], where: str) -> MmluProRow:
    try:
        return MmluProRow.model_validate(row)
    except ValidationError as exc:
        raise RecordingError(
            f"{where}: {first_error(exc)}. Fix: restore the published file "
            f"(`emafusion data fetch --dataset mmlu-pro`) or repair that entry."
        ) from exc


def load_mmlu_pro(files: Iterable[Path]) -> RecordSet:
    questions: dict[int, MmluProRow] = {}
    outcomes: dict[int, dict[str, Outcome]] = defaultdict(dict)
    notes = []
    files = list(files)
    file_of: dict[str, Path] = {}
    for path in files:
        model, entries, non_records = _zip_entries(path)
        if model in file_of:
            raise RecordingError(
                f"{path}: a second file for model {model!r} (the first: {file_of[model]}). "
                f"Fix: pass one file per model."
            )
        file_of[model] = path
        if non_records:
            notes.append(f"{model}: skipped {non_records} list entries that are not records")
        for position, raw in entries:
            where = f"{path}, list entry {position} (question_id {_short(raw['question_id'])})"
            row = _checked_row(raw, where)
            if model in outcomes[row.question_id]:
                raise RecordingError(
                    f"{where}: question_id {row.question_id} appears twice in this file. "
                    f"{_REFETCH}"
                )
            questions.setdefault(row.question_id, row)
            response = raw.get("model_outputs", raw.get("generated_text"))
            # A null pred is a wrong answer, never a missing one.
            correct = row.pred is not None and row.pred == row.answer
            outcomes[row.question_id][model] = Outcome(
                response=response if isinstance(response, str) else None,
                score=1.0 if correct else 0.0,
            )
    records = [
        Record(
            id=f"mmlu-pro/{qid}",
            dataset="mmlu-pro",
            category=q.category,
            query=mmlu_pro_query(q.question, q.options),
            reference=q.answer,
            outcomes=dict(sorted(outcomes[qid].items())),
        )
        for qid, q in sorted(questions.items())
    ]
    source = str(files[0].parent) if files else "mmlu-pro"
    return RecordSet("mmlu-pro", records, source=source, notes=notes)
