"""The RouterBench recordings: CSVs with one row per (sample, some models) and a column
group per model (`<model>` score, `<model>|model_response`, `<model>|total_cost`).

Text cells hold Python list literals of strings. Every problem names the file, the line
(the last physical line of the CSV record), the column, and the fix.
"""

from __future__ import annotations

import ast
import csv
import io
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

from pydantic import ValidationError

from emafusion.stores.answers import extract_choice
from emafusion.stores.recordings.schema import (
    Outcome,
    Record,
    RecordingError,
    RecordSet,
    first_error,
)
from emafusion.stores.recordings.utf8 import NotUTF8Error, decode_utf8, unencodable

_REQUIRED = ("sample_id", "prompt", "eval_name")
_RB_FIXED = {"", *_REQUIRED, "oracle_model_to_route_to"}
_RESTORE = "Fix: restore the published file (`emafusion data fetch --dataset routerbench`)"
# No cap on a cell's size (published cells stay under 5 kB, a user's prompts need not):
# the largest value every platform's C long accepts (sys.maxsize overflows on Windows).
_FIELD_LIMIT = 2**31 - 1


def _literal_list(text: str, where: str, column: str) -> str:
    """A Python list literal of strings (as RouterBench stores text) joined into one text."""
    try:
        value = ast.literal_eval(text)
    # TypeError: a set or dict literal with unhashable members, e.g. "{[]}".
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as exc:
        raise RecordingError(
            f"{where}, column {column!r}: not a Python list literal ({exc.__class__.__name__}: "
            f"{exc}). {_RESTORE} or repair the cell."
        ) from exc
    if isinstance(value, str):
        joined = value
    elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        joined = "\n\n".join(value)
    else:
        raise RecordingError(
            f"{where}, column {column!r}: expected a list of strings, got "
            f"{type(value).__name__}. {_RESTORE}."
        )
    bad = unencodable(joined)
    if bad is not None:
        raise RecordingError(
            f"{where}, column {column!r}: character {bad} is a lone surrogate "
            f"({joined[bad]!r}), which no UTF-8 file can hold. {_RESTORE} or repair the cell."
        )
    return joined


def _float_cell(text: str, where: str, column: str) -> float | None:
    if text.strip() == "":
        return None
    try:
        value = float(text)
    except ValueError as exc:
        raise RecordingError(
            f"{where}, column {column!r}: {text[:40]!r} is not a number. {_RESTORE} or "
            f"repair the cell."
        ) from exc
    if not math.isfinite(value):
        raise RecordingError(
            f"{where}, column {column!r}: {text[:40]!r} is not a finite number. {_RESTORE} "
            f"or repair the cell."
        )
    return value


def _check_header(path: Path, header: list[str] | None) -> list[str]:
    if not header:
        raise RecordingError(f"{path}, line 1: no header row (the file is empty). {_RESTORE}.")
    repeated = sorted(name for name, n in Counter(header).items() if n > 1)
    if repeated:
        raise RecordingError(
            f"{path}, line 1: column(s) {', '.join(map(repr, repeated))} appear more than "
            f"once in the header. {_RESTORE}."
        )
    missing = [name for name in _REQUIRED if name not in header]
    if missing:
        raise RecordingError(
            f"{path}, line 1: the header lacks column(s) {', '.join(map(repr, missing))} "
            f"(it has {len(header)} columns). {_RESTORE}."
        )
    return header


def _read_routerbench_csv(path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """(where, row) of every row; every row has exactly the header's columns."""
    csv.field_size_limit(_FIELD_LIMIT)
    try:
        # The published files are a few MB; decoding whole gives the exact place of a bad
        # byte, which a streamed decode cannot.
        text = decode_utf8(path.read_bytes())
    except NotUTF8Error as exc:
        raise RecordingError(f"{path}, {exc}.") from exc
    except OSError as exc:
        raise RecordingError(
            f"{path}: cannot be read ({exc.strerror or exc}). {_RESTORE}."
        ) from exc
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = _check_header(path, next(reader, None))
        for cells in reader:
            where = f"{path}, line {reader.line_num}"
            if not cells:
                continue  # a blank line, as csv.DictReader skips
            if len(cells) != len(header):
                raise RecordingError(
                    f"{where}: {len(cells)} fields, but the header has {len(header)}. "
                    f"{_RESTORE} or repair the row."
                )
            yield where, dict(zip(header, cells, strict=True))
    except csv.Error as exc:
        raise RecordingError(
            f"{path}, line {reader.line_num}: not valid CSV ({exc}). {_RESTORE}."
        ) from exc


def load_routerbench(files: Iterable[Path]) -> RecordSet:
    """Rows merged by sample_id before anything else: 14 sample_ids stand in two rows.

    Of such a pair, one row holds one model's cells with the prompt listed twice, the
    other holds the other ten models with the prompt once; the merged record keeps the
    prompt of the row with the most scores, and each model's cells from its scored row.
    """
    # sample_id -> (prompt, eval_name, scores in that row, where that row is)
    prompts: dict[str, tuple[str, str, int, str]] = {}
    cells: dict[str, dict[str, Outcome]] = defaultdict(dict)
    row_cost_sum: dict[str, float] = defaultdict(float)
    files = list(files)
    rows_read = 0
    for path in files:
        for where, row in _read_routerbench_csv(path):
            rows_read += 1
            sample_id = row["sample_id"].strip()
            if not sample_id:
                raise RecordingError(f"{where}: empty sample_id. {_RESTORE}.")
            scored = 0
            for model in (c for c in row if c not in _RB_FIXED and "|" not in c):
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
                prompts[sample_id] = (prompt, row["eval_name"], scored, where)
    records = []
    for sample_id, (prompt, eval_name, _, where) in sorted(prompts.items()):
        outcomes = dict(sorted(cells[sample_id].items()))
        try:
            record = Record(
                id=f"routerbench/{sample_id}",
                dataset="routerbench",
                category=eval_name,
                query=prompt,
                reference=_consensus_reference(outcomes),
                outcomes=outcomes,
            )
        except ValidationError as exc:
            raise RecordingError(f"{where}: {first_error(exc)}. {_RESTORE}.") from exc
        records.append(record)
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
        raise RecordingError(
            f"{where}, model {model!r}: {first_error(exc)}. {_RESTORE} or repair the cell."
        ) from exc


def _consensus_reference(outcomes: dict[str, Outcome]) -> str | None:
    """RouterBench publishes scores, not answer keys: the letter every correct model chose.

    Derived, not published; None when the correct responses disagree or do not parse.
    """
    letters = {
        extract_choice(o.response) for o in outcomes.values() if o.score >= 0.5 and o.response
    }
    letters.discard(None)
    return letters.pop() if len(letters) == 1 else None
