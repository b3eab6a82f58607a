"""The loaders on small synthetic files: valid ones load, bad ones name file, place and fix."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import pytest

from emafusion.stores.atomic import write_text_atomic
from emafusion.stores.recordings import (
    DataError,
    Record,
    RecordingError,
    load_jsonl,
    load_mmlu_pro,
    load_routerbench,
    write_jsonl,
)

# --- JSON Lines ---------------------------------------------------------------------------


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _line(**overrides: object) -> str:
    base: dict[str, object] = {
        "id": "q1",
        "dataset": "mine",
        "category": "math",
        "query": "1+1?",
        "reference": "2",
        "outcomes": {
            "m": {
                "response": "2",
                "score": 1.0,
                "cost_usd": 0.001,
                "input_tokens": 3,
                "output_tokens": 1,
            }
        },
    }
    base.update(overrides)
    return json.dumps(base)


def test_jsonl_invalid_line_names_line_and_field(tmp_path: Path) -> None:
    bad = _line(id="q2", outcomes={"m": {"response": "x", "score": 1.5}})
    path = _write_lines(tmp_path / "mine.jsonl", [_line(), bad, _line(id="q3")])
    with pytest.raises(RecordingError) as err:
        load_jsonl(path)
    message = str(err.value)
    assert f"{path}:2" in message
    assert "outcomes.m.score" in message
    assert "--skip-invalid" in message


def test_jsonl_line_without_outcomes_is_refused(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "mine.jsonl", [_line(), _line(id="q2", outcomes={})])
    with pytest.raises(RecordingError, match=r"mine.jsonl:2: field 'outcomes': empty"):
        load_jsonl(path)
    assert [r.id for r in load_jsonl(path, skip_invalid=True).records] == ["q1"]


def test_jsonl_skip_invalid_counts(tmp_path: Path) -> None:
    lines = [_line(), "{not json", _line(id="q3", score=1), _line(id="q4")]
    path = _write_lines(tmp_path / "mine.jsonl", lines)
    loaded = load_jsonl(path, skip_invalid=True)
    assert [r.id for r in loaded.records] == ["q1", "q4"]
    assert loaded.skipped == 2
    assert loaded.notes[0].startswith(f"skipped {path}:2: ")


def test_jsonl_duplicate_ids_name_both_lines(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "mine.jsonl", [_line(), _line(id="q2"), _line()])
    with pytest.raises(RecordingError, match="duplicate record ids") as err:
        load_jsonl(path)
    assert f"{path}:3: duplicate record ids: 'q1' is also on line 1" in str(err.value)


def test_record_rejects_nan_cost() -> None:
    with pytest.raises(ValueError, match="cost_usd"):
        Record.model_validate_json(_line(outcomes={"m": {"score": 1.0, "cost_usd": "NaN"}}))


def test_jsonl_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text(_line() + "\n" + _line(id="q2") + "\n", encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    assert [r.id for r in load_jsonl(path).records] == ["q1", "q2"]


def test_jsonl_not_utf8_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    latin1 = _line(id="q2", query="cafe?").replace("cafe", "caf\u00e9").encode("latin-1")
    path.write_bytes(_line().encode() + b"\n" + latin1 + b"\n")
    with pytest.raises(RecordingError) as err:
        load_jsonl(path)
    column = latin1.index(b"\xe9") + 1
    message = str(err.value)
    assert f"{path}:2: column {column}: byte 0xe9 is not UTF-8" in message
    assert "Fix:" in message
    skipped = load_jsonl(path, skip_invalid=True)
    assert [r.id for r in skipped.records] == ["q1"] and skipped.skipped == 1


@pytest.mark.parametrize("content", [b"", b"\n\n  \n", b"\xef\xbb\xbf"])
def test_empty_jsonl_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_bytes(content)
    with pytest.raises(RecordingError) as err:
        load_jsonl(path)
    assert f"{path}:1: no records" in str(err.value) and "Fix:" in str(err.value)


def test_jsonl_with_only_invalid_lines_is_an_error_even_when_skipping(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "mine.jsonl", ["{", '{"id": ""}'])
    with pytest.raises(RecordingError) as err:
        load_jsonl(path, skip_invalid=True)
    message = str(err.value)
    assert "none of its 2 lines is a valid record" in message
    assert f"first: {path}:1:" in message


def test_jsonl_directory_or_missing_file(tmp_path: Path) -> None:
    for path in (tmp_path, tmp_path / "absent.jsonl"):
        with pytest.raises(RecordingError, match="no such file.*Fix"):
            load_jsonl(path)


def test_write_jsonl_round_trips(tmp_path: Path) -> None:
    records = [Record.model_validate_json(_line(id=f"q{i}")) for i in range(3)]
    path = tmp_path / "out.jsonl"
    assert write_jsonl(records, path) == 3
    assert load_jsonl(path).records == records


# --- MMLU-Pro -----------------------------------------------------------------------------


def _mmlu_row(qid: int, **overrides: object) -> dict[str, object]:
    row: dict[str, object] = {
        "question_id": qid,
        "question": "Q?",
        "options": ["x", "y"],
        "answer": "B",
        "category": "math",
        "pred": "B",
        "model_outputs": "The answer is (B).",
    }
    row.update(overrides)
    return row


def _mmlu_zip(tmp_path: Path, payload: object, model: str = "tiny") -> Path:
    path = tmp_path / f"model_outputs_{model}_5shots.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"model_outputs_{model}_5shots.json", json.dumps(payload))
    return path


def test_mmlu_pro_zip_skips_non_records(tmp_path: Path) -> None:
    rows = [
        _mmlu_row(1),
        "other",
        _mmlu_row(2, question="R?", answer="A", category="law", pred=None, model_outputs="?"),
    ]
    records = load_mmlu_pro([_mmlu_zip(tmp_path, rows)])
    assert [r.outcomes["tiny"].score for r in records.records] == [1.0, 0.0]
    assert records.records[0].query == "Q?\nA. x\nB. y"
    assert "skipped 1" in records.notes[0]


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"question_id": 7}, "question"),
        (_mmlu_row(7, options=5), "options"),
        (_mmlu_row(7, options=[str(i) for i in range(11)]), "options"),
        (_mmlu_row(7, question_id="seven"), "question_id"),
        (_mmlu_row(7, category=None), "category"),
    ],
)
def test_mmlu_pro_bad_record_names_file_entry_and_field(
    tmp_path: Path, row: dict[str, object], field: str
) -> None:
    path = _mmlu_zip(tmp_path, [_mmlu_row(1), row])
    with pytest.raises(RecordingError) as err:
        load_mmlu_pro([path])
    message = str(err.value)
    assert f"{path}, list entry 1 (question_id " in message
    assert f"field {field!r}" in message and "Fix:" in message


def test_mmlu_pro_repeated_question_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match="list entry 1 .*question_id 3 appears twice"):
        load_mmlu_pro([_mmlu_zip(tmp_path, [_mmlu_row(3), _mmlu_row(3)])])


@pytest.mark.parametrize(
    "json_bytes",
    [b"{not json", b'{"a": 1}', b'["\\ud800"]', b"[" * 500 + b"]" * 500, b"\xff\xfe"],
)
def test_mmlu_pro_bad_json_inside_is_a_clear_error(tmp_path: Path, json_bytes: bytes) -> None:
    path = tmp_path / "model_outputs_tiny_5shots.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("inner.json", json_bytes)
    with pytest.raises(RecordingError) as err:
        load_mmlu_pro([path])
    assert f"{path}, member inner.json" in str(err.value) and "Fix:" in str(err.value)


def test_mmlu_pro_not_a_zip_and_wrong_name(tmp_path: Path) -> None:
    fake = tmp_path / "model_outputs_tiny_5shots.zip"
    fake.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(RecordingError, match="not a readable zip.*emafusion data fetch"):
        load_mmlu_pro([fake])
    with pytest.raises(RecordingError, match="model_outputs_<MODEL>_5shots.zip"):
        load_mmlu_pro([tmp_path / "outputs.zip"])


# --- RouterBench --------------------------------------------------------------------------

_HEADER = [
    "",
    "sample_id",
    "prompt",
    "eval_name",
    "m1",
    "m1|model_response",
    "m1|total_cost",
    "m2",
    "m2|model_response",
    "m2|total_cost",
    "oracle_model_to_route_to",
]


def _csv(path: Path, rows: list[list[str]], header: list[str] = _HEADER, bom: bool = False) -> Path:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(out.getvalue(), encoding="utf-8-sig" if bom else "utf-8")
    return path


_ROW = ["0", "s.1", "['Pick A or B.']", "arc", "1.0", "['A']", "0.5", "0.0", "['B']", "0.25", "m1"]


def test_routerbench_rows_merge_and_a_bom_is_accepted(tmp_path: Path) -> None:
    # The second row of s.1 scores only m2 (blank m1): merged into one record.
    first = ["0", "s.1", "['Pick A or B.']", "arc", "1.0", "['A']", "0.5", "", "", "", "m1"]
    second = ["1", "s.1", "['Pick A or B.', 'Pick A or B.']", "arc", "", "", "", "0.0"]
    second += ["['B']", "0.25", "m1"]
    for bom in (False, True):
        records = load_routerbench([_csv(tmp_path / "t.csv", [first, second], bom=bom)])
        (record,) = records.records
        assert record.id == "routerbench/s.1" and record.query == "Pick A or B."
        assert record.outcomes["m1"].score == 1.0 and record.outcomes["m2"].cost_usd == 0.25
        assert record.reference == "A"
        assert records.notes == ["merged 1 duplicate rows by sample_id"]
        assert records.models == ["m1", "m2"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({4: "2.0"}, "model 'm1': field 'score'"),
        ({4: "high"}, "column 'm1': 'high' is not a number"),
        ({6: "inf"}, "column 'm1|total_cost': 'inf' is not a finite number"),
        ({5: "{[]}"}, "column 'm1|model_response': not a Python list literal (TypeError"),
        ({5: "[1, 2]"}, "column 'm1|model_response': expected a list of strings"),
        ({2: "['\\ud800']"}, "column 'prompt': character 0 is a lone surrogate"),
        ({1: " "}, "empty sample_id"),
    ],
)
def test_routerbench_bad_cell_names_file_line_and_column(
    tmp_path: Path, change: dict[int, str], expected: str
) -> None:
    row = list(_ROW)
    for index, value in change.items():
        row[index] = value
    path = _csv(tmp_path / "t.csv", [_ROW[:1] + ["s.0"] + _ROW[2:], row])
    with pytest.raises(RecordingError) as err:
        load_routerbench([path])
    message = str(err.value)
    assert f"{path}, line 3" in message and expected in message and "Fix" in message


def test_routerbench_row_and_header_shape(tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match=r"line 2: 4 fields, but the header has 11"):
        load_routerbench([_csv(tmp_path / "short.csv", [_ROW[:4]])])
    with pytest.raises(RecordingError, match=r"line 1: the header lacks column\(s\) 'eval_name'"):
        load_routerbench([_csv(tmp_path / "cols.csv", [], header=["sample_id", "prompt"])])
    with pytest.raises(RecordingError, match=r"line 1: column\(s\) 'm1' appear more than once"):
        load_routerbench([_csv(tmp_path / "dup.csv", [], header=[*_HEADER, "m1"])])
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(RecordingError, match="line 1: no header row"):
        load_routerbench([empty])


def test_routerbench_not_utf8_names_line_and_column(tmp_path: Path) -> None:
    path = _csv(tmp_path / "t.csv", [_ROW])
    path.write_bytes(path.read_bytes().replace(b"Pick", b"P\xe9ck"))
    with pytest.raises(RecordingError) as err:
        load_routerbench([path])
    assert f"{path}, line 2, column 10 (byte " in str(err.value)
    assert "is not UTF-8. Fix:" in str(err.value)


def test_recording_errors_are_data_errors() -> None:
    assert issubclass(RecordingError, DataError)


# --- atomic writes ------------------------------------------------------------------------


def test_atomic_write_keeps_a_readable_mode(tmp_path: Path) -> None:
    fresh = write_text_atomic(tmp_path / "out" / "results.json", "{}")
    assert fresh.stat().st_mode & 0o777 == 0o644
    fresh.chmod(0o600)
    write_text_atomic(fresh, "{ }")
    assert fresh.stat().st_mode & 0o777 == 0o600 and fresh.read_text() == "{ }"
    assert [p.name for p in fresh.parent.iterdir()] == ["results.json"]
