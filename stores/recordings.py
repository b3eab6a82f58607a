"""Recorded model outputs: one generic `Record` model and the loaders that produce it.

Both published sets (MMLU-Pro zips, RouterBench CSVs) and a user's own logs (JSON Lines,
one `Record` per line) load into the same shape, so everything downstream is written once.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import json
import math
import re
import sys
import zipfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from emafusion.stores.answers import LETTERS, extract_choice
from emafusion.stores.atomic import write_text_atomic
from emafusion.stores.download import DataError, dataset_files

Split = Literal["train", "validation", "test"]
SPLITS: tuple[Split, ...] = ("train", "validation", "test")


class RecordingError(DataError):
    """A recording that cannot be read; the message names the file, line or field, and fix."""


class Outcome(BaseModel):
    """How one model did on one query."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    response: str | None = None
    score: float = Field(ge=0.0, le=1.0)
    cost_usd: float | None = Field(default=None, ge=0.0)
    input_tokens: int | None = Field(default=None, ge=0)
    output_tokens: int | None = Field(default=None, ge=0)

    @field_validator("score", "cost_usd")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


class Record(BaseModel):
    """One query with every recorded model's outcome on it."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    dataset: str = Field(min_length=1)
    category: str
    query: str
    reference: str | None = None
    outcomes: dict[str, Outcome]

    @property
    def split(self) -> Split:
        return split_of(self.id)


def split_of(record_id: str) -> Split:
    """The project's fixed split rule, shared by every dataset and anyone re-checking."""
    h = int(hashlib.sha256(record_id.encode()).hexdigest(), 16) % 10
    if h in (0, 1):
        return "test"
    if h == 2:
        return "validation"
    return "train"


def normalize_query(text: str) -> str:
    """Whitespace-insensitive form of a query, for look-ups by text."""
    return " ".join(text.split())


_BLOCK_SEPARATOR = "\n\n"
# A worked example carries its own answer: "Answer:" followed by text on the next line.
_SOLVED_EXAMPLE = re.compile(r"Answer:\s*\n\s*\S")


def routing_text(query: str) -> str:
    """The part of a query that says what is asked, for embedding.

    Few-shot prompts open with worked examples (RouterBench's Winogrande prompts all share
    the same ones); embedded as is, every query would look alike. When earlier blocks carry
    solved examples, routing embeds only the final block, the question itself. The model
    still sees the whole prompt.
    """
    head, sep, last = query.rpartition(_BLOCK_SEPARATOR)
    if sep and last.strip() and _SOLVED_EXAMPLE.search(head):
        return last.strip()
    return query


def embedding_text(record: Record) -> str:
    """The text a record is embedded by; the same rule as for live queries."""
    return routing_text(record.query)


@dataclass
class RecordSet:
    """The records of one dataset, with where they came from."""

    name: str
    records: list[Record]
    source: str
    skipped: int = 0
    notes: list[str] = field(default_factory=list)
    # Per-model figures over the raw published rows, before merging (see load_routerbench).
    published_row_cost_per_1k: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._by_id = {r.id: r for r in self.records}
        if len(self._by_id) != len(self.records):
            dupes = [i for i, n in Counter(r.id for r in self.records).items() if n > 1]
            raise RecordingError(
                f"{self.source}: duplicate record ids {dupes[:5]}. Fix: give every query "
                f"a unique id (merge the outcomes of one query into one line)."
            )

    def __len__(self) -> int:
        return len(self.records)

    def get(self, record_id: str) -> Record | None:
        return self._by_id.get(record_id)

    @property
    def models(self) -> list[str]:
        seen: dict[str, None] = {}
        for record in self.records:
            for model in record.outcomes:
                seen.setdefault(model, None)
        return sorted(seen)

    @property
    def categories(self) -> list[str]:
        return sorted({r.category for r in self.records})

    def split(self, *names: Split) -> list[Record]:
        for name in names:
            if name not in SPLITS:
                raise ValueError(f"unknown split {name!r}; use one of {', '.join(SPLITS)}")
        return [r for r in self.records if r.split in names]

    def split_sizes(self) -> dict[Split, int]:
        counts = Counter(r.split for r in self.records)
        return {name: counts.get(name, 0) for name in SPLITS}


# --- MMLU-Pro ---------------------------------------------------------------------------

_MMLU_FILE = re.compile(r"model_outputs_(?P<model>.+)_5shots\.zip$")


def mmlu_pro_query(question: str, options: list[str]) -> str:
    """Zero-shot: the question, then lettered options (A., B., ...)."""
    lines = [question.strip()]
    lines += [f"{LETTERS[i]}. {str(option).strip()}" for i, option in enumerate(options)]
    return "\n".join(lines)


def read_mmlu_pro_zip(path: Path) -> tuple[str, list[dict[str, Any]], int]:
    """(model name, records, count of list entries that are not records) of one zip."""
    match = _MMLU_FILE.search(path.name)
    if not match:
        raise RecordingError(
            f"{path}: expected a file named model_outputs_<MODEL>_5shots.zip. Fix: keep the "
            f"published file names."
        )
    try:
        with zipfile.ZipFile(path) as archive:
            members = [n for n in archive.namelist() if n.endswith(".json")]
            if len(members) != 1:
                raise RecordingError(
                    f"{path}: expected one .json inside, found {len(members)}. Fix: re-download."
                )
            payload = json.loads(archive.read(members[0]))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
        raise RecordingError(
            f"{path}: not a readable zip ({exc}). Fix: delete it and run "
            f"`emafusion data fetch --dataset mmlu-pro`."
        ) from exc
    except json.JSONDecodeError as exc:
        raise RecordingError(
            f"{path}: the JSON inside is invalid ({exc}). Fix: re-download."
        ) from exc
    if not isinstance(payload, list):
        raise RecordingError(f"{path}: expected a JSON list of records. Fix: re-download.")
    records = [d for d in payload if isinstance(d, dict) and "question_id" in d]
    return match.group("model"), records, len(payload) - len(records)


def load_mmlu_pro(files: Iterable[Path]) -> RecordSet:
    questions: dict[int, dict[str, Any]] = {}
    outcomes: dict[int, dict[str, Outcome]] = defaultdict(dict)
    notes = []
    files = list(files)
    for path in files:
        model, rows, non_records = read_mmlu_pro_zip(path)
        if non_records:
            notes.append(f"{model}: skipped {non_records} list entries that are not records")
        for row in rows:
            qid = int(row["question_id"])
            questions.setdefault(qid, row)
            response = row.get("model_outputs", row.get("generated_text"))
            # A null pred is a wrong answer, never a missing one.
            correct = row.get("pred") is not None and row.get("pred") == row["answer"]
            outcomes[qid][model] = Outcome(
                response=response if isinstance(response, str) else None,
                score=1.0 if correct else 0.0,
            )
    records = [
        Record(
            id=f"mmlu-pro/{qid}",
            dataset="mmlu-pro",
            category=str(q["category"]),
            query=mmlu_pro_query(str(q["question"]), list(q["options"])),
            reference=str(q["answer"]),
            outcomes=dict(sorted(outcomes[qid].items())),
        )
        for qid, q in sorted(questions.items())
    ]
    source = str(files[0].parent) if files else "mmlu-pro"
    return RecordSet("mmlu-pro", records, source=source, notes=notes)


# --- RouterBench ------------------------------------------------------------------------

_RB_FIXED = {"", "sample_id", "prompt", "eval_name", "oracle_model_to_route_to"}


def _literal_list(text: str, where: str, column: str) -> str:
    """A Python list literal of strings (as RouterBench stores text) joined into one text."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        raise RecordingError(
            f"{where}, column {column!r}: not a Python list literal ({exc.__class__.__name__}: "
            f"{exc}). Fix: restore the published file (`emafusion data fetch`) or repair the cell."
        ) from exc
    if isinstance(value, str):
        return value
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise RecordingError(
            f"{where}, column {column!r}: expected a list of strings, got "
            f"{type(value).__name__}. Fix: restore the published file."
        )
    return "\n\n".join(value)


def _float_cell(text: str, where: str, column: str) -> float | None:
    if text.strip() == "":
        return None
    try:
        value = float(text)
    except ValueError as exc:
        raise RecordingError(f"{where}, column {column!r}: {text!r} is not a number.") from exc
    if not math.isfinite(value):
        raise RecordingError(f"{where}, column {column!r}: {text!r} is not a finite number.")
    return value


def _read_routerbench_csv(path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    csv.field_size_limit(sys.maxsize)
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        for row in reader:
            yield f"{path}, line {reader.line_num}", row


def load_routerbench(files: Iterable[Path]) -> RecordSet:
    """Rows merged by sample_id before anything else: 14 sample_ids stand in two rows.

    Of such a pair, one row holds one model's cells with the prompt listed twice, the
    other holds the other ten models with the prompt once; the merged record keeps the
    prompt of the row with the most scores, and each model's cells from its scored row.
    """
    prompts: dict[str, tuple[str, str, int]] = {}
    cells: dict[str, dict[str, Outcome]] = defaultdict(dict)
    row_cost_sum: dict[str, float] = defaultdict(float)
    files = list(files)
    rows_read = 0
    for path in files:
        for where, row in _read_routerbench_csv(path):
            rows_read += 1
            sample_id = row.get("sample_id", "").strip()
            if not sample_id:
                raise RecordingError(f"{where}: empty sample_id. Fix: restore the published file.")
            scored = 0
            for model in (c for c in row if c and c not in _RB_FIXED and "|" not in c):
                cost = _float_cell(row.get(f"{model}|total_cost", ""), where, f"{model}|total_cost")
                row_cost_sum[model] += cost or 0.0
                outcome = _routerbench_outcome(row, model, cost, where)
                if outcome is None:  # blank score: unavailable in this row, never wrong
                    continue
                if model in cells[sample_id]:
                    raise RecordingError(
                        f"{where}: sample {sample_id} has two scores for {model}. Fix: keep one."
                    )
                cells[sample_id][model] = outcome
                scored += 1
            if sample_id not in prompts or scored > prompts[sample_id][2]:
                prompt = _literal_list(row["prompt"], where, "prompt")
                prompts[sample_id] = (prompt, row["eval_name"], scored)
    records = []
    for sample_id, (prompt, eval_name, _) in sorted(prompts.items()):
        outcomes = dict(sorted(cells[sample_id].items()))
        records.append(
            Record(
                id=f"routerbench/{sample_id}",
                dataset="routerbench",
                category=eval_name,
                query=prompt,
                reference=_consensus_reference(outcomes),
                outcomes=outcomes,
            )
        )
    merged = rows_read - len(records)
    notes = [f"merged {merged} duplicate rows by sample_id"] if merged else []
    source = str(files[0].parent) if files else "routerbench"
    per_row = {m: 1000.0 * total / rows_read for m, total in row_cost_sum.items() if rows_read}
    return RecordSet(
        "routerbench", records, source=source, notes=notes, published_row_cost_per_1k=per_row
    )


def _routerbench_outcome(
    row: dict[str, str], model: str, cost: float | None, where: str
) -> Outcome | None:
    score = _float_cell(row[model], where, model)
    if score is None:
        return None
    response_cell = row.get(f"{model}|model_response", "")
    response = (
        _literal_list(response_cell, where, f"{model}|model_response")
        if response_cell.strip()
        else None
    )
    try:
        return Outcome(response=response, score=score, cost_usd=cost)
    except ValidationError as exc:
        raise RecordingError(f"{where}, model {model!r}: {_first_error(exc)}") from exc


def _consensus_reference(outcomes: dict[str, Outcome]) -> str | None:
    """RouterBench publishes scores, not answer keys: the letter every correct model chose.

    Derived, not published; None when the correct responses disagree or do not parse.
    """
    letters = {
        extract_choice(o.response) for o in outcomes.values() if o.score >= 0.5 and o.response
    }
    letters.discard(None)
    return letters.pop() if len(letters) == 1 else None


# --- JSON Lines -------------------------------------------------------------------------


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    location = ".".join(str(part) for part in err["loc"]) or "(line)"
    return f"field {location!r}: {err['msg']}"


def load_jsonl(path: Path, skip_invalid: bool = False) -> RecordSet:
    """A user's recordings, one `Record` per line; errors name the line and field."""
    if not path.is_file():
        raise RecordingError(
            f"{path}: no such file. Fix: pass an existing --recordings FILE.jsonl."
        )
    records: list[Record] = []
    skipped = 0
    notes: list[str] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                records.append(Record.model_validate_json(line))
            except ValidationError as exc:
                message = f"{path}:{lineno}: {_first_error(exc)}"
                if not skip_invalid:
                    raise RecordingError(
                        f"{message}. Fix: correct that line, or pass --skip-invalid to skip "
                        f"invalid lines and count them."
                    ) from exc
                skipped += 1
                if len(notes) < 5:
                    notes.append(f"skipped {message}")
    name = records[0].dataset if records and len({r.dataset for r in records}) == 1 else path.stem
    return RecordSet(name, records, source=str(path), skipped=skipped, notes=notes)


def write_jsonl(records: Iterable[Record], path: Path) -> int:
    """Write records atomically (temporary file, then rename); returns the count."""
    lines = [record.model_dump_json() + "\n" for record in records]
    write_text_atomic(path, "".join(lines))
    return len(lines)


# --- one entry point --------------------------------------------------------------------


def load_dataset(
    dataset: str | None = None,
    recordings: Path | None = None,
    data_dir: Path | None = None,
    skip_invalid: bool = False,
) -> RecordSet:
    """Recordings by dataset name (published sets) or from a JSON Lines file."""
    if recordings is not None:
        return load_jsonl(Path(recordings), skip_invalid=skip_invalid)
    if dataset == "mmlu-pro":
        return load_mmlu_pro(dataset_files("mmlu-pro", data_dir))
    if dataset == "routerbench":
        return load_routerbench(dataset_files("routerbench", data_dir))
    raise RecordingError(
        f"unknown dataset {dataset!r}. Fix: --dataset mmlu-pro|routerbench, or "
        f"--recordings FILE.jsonl for your own."
    )
