"""The loaders read the published files right: the data README's figures, from the real files."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import zipfile
from pathlib import Path

import pytest

from emafusion.stores.download import ChecksumMismatchError, dataset_files
from emafusion.stores.recordings import (
    Record,
    RecordingError,
    RecordSet,
    embedding_text,
    load_jsonl,
    load_mmlu_pro,
    load_routerbench,
    read_mmlu_pro_zip,
    split_of,
    write_jsonl,
)


def _readme_table(data_dir: Path, heading: str) -> list[list[str]]:
    """Rows of the first markdown table after `heading` in the data README."""
    text = (data_dir / "README.md").read_text()
    section = text[text.index(heading) :]
    rows = []
    for line in section.splitlines():
        if line.startswith("|"):
            if not set(line) <= set("|-: "):
                rows.append([cell.strip() for cell in line.strip("|").split("|")])
        elif rows:
            break
    return rows[1:]  # drop the header


def _per_model(records: RecordSet, model: str) -> tuple[int, float, list[float]]:
    outcomes = [r.outcomes[model] for r in records.records if model in r.outcomes]
    accuracy = sum(o.score for o in outcomes) / len(outcomes)
    return len(outcomes), accuracy, [o.cost_usd for o in outcomes if o.cost_usd is not None]


def test_mmlu_pro_matches_the_data_readme(mmlu_pro: RecordSet, data_dir: Path) -> None:
    table = _readme_table(data_dir, "## mmlu-pro/")
    assert len(table) == 13
    assert len(mmlu_pro) == 12_032
    assert len(mmlu_pro.categories) == 14
    for model, records, accuracy, *_ in table:
        n, acc, _ = _per_model(mmlu_pro, model)
        assert n == int(records.replace(",", "")), model
        assert f"{acc:.4f}" == accuracy, model
    assert any("DeepSeek-Coder-V2: skipped 43" in note for note in mmlu_pro.notes)


def test_routerbench_matches_the_data_readme(routerbench: RecordSet, data_dir: Path) -> None:
    table = _readme_table(data_dir, "## routerbench/")
    assert len(table) == 11
    assert len(routerbench) == 2_737
    for model, accuracy, cost_per_1k in table:
        n, acc, costs = _per_model(routerbench, model)
        assert n == 2_737, model
        assert f"{acc:.4f}" == accuracy, model
        # The README's cost column is a mean over the 2,751 published rows.
        assert f"{routerbench.published_row_cost_per_1k[model]:.3f}" == cost_per_1k, model
        merged = 1000 * sum(costs) / len(costs)
        assert merged == pytest.approx(float(cost_per_1k), rel=0.01), model


def test_mmlu_pro_record_shape(mmlu_pro: RecordSet) -> None:
    record = mmlu_pro.get("mmlu-pro/70")
    assert record is not None
    lines = record.query.splitlines()
    assert lines[1].startswith("A. ") and lines[2].startswith("B. ")
    assert record.reference is not None and record.reference in "ABCDEFGHIJ"
    gemini = mmlu_pro.models.index("gemini-1.5-pro-002")
    assert gemini >= 0
    # Coverage differs: a missing recording is absent, never a zero score.
    missing = [r for r in mmlu_pro.records if "DeepSeek-Coder-V2" not in r.outcomes]
    assert len(missing) == 12_032 - 10_351


def test_routerbench_duplicate_rows_merge_into_one_record(routerbench: RecordSet) -> None:
    record = routerbench.get("routerbench/arc-challenge.val.136")
    assert record is not None
    assert len(record.outcomes) == 11
    assert record.outcomes["gpt-3.5-turbo-1106"].score == 1.0
    # The merged record keeps the prompt once (the single-model row lists it twice).
    assert record.query.count(embedding_text(record)) == 1
    assert any("merged 14 duplicate rows" in note for note in routerbench.notes)


def test_winogrande_embedding_text_drops_the_shared_worked_examples(
    routerbench: RecordSet,
) -> None:
    wino = [r for r in routerbench.records if r.category == "winogrande"]
    texts = [embedding_text(r) for r in wino]
    assert len(set(texts)) > 0.99 * len(texts)
    shared = "Ian volunteered to eat Dennis's menudo"
    assert all(shared in r.query for r in wino)
    assert not any(shared in t for t in texts)
    assert all(t.rstrip().endswith("Answer:") for t in texts)


def test_split_rule_is_the_published_hash_rule(routerbench: RecordSet) -> None:
    for record in routerbench.records[:200]:
        h = int(hashlib.sha256(record.id.encode()).hexdigest(), 16) % 10
        expected = "test" if h in (0, 1) else "validation" if h == 2 else "train"
        assert split_of(record.id) == expected
    sizes = routerbench.split_sizes()
    assert sum(sizes.values()) == len(routerbench)
    assert 0.15 < sizes["test"] / len(routerbench) < 0.25
    assert 0.06 < sizes["validation"] / len(routerbench) < 0.14


def test_jsonl_round_trip(routerbench: RecordSet, tmp_path: Path) -> None:
    path = tmp_path / "slice.jsonl"
    subset = routerbench.records[:50]
    assert write_jsonl(subset, path) == 50
    loaded = load_jsonl(path)
    assert loaded.records == subset
    assert loaded.name == "routerbench"
    first = json.loads(path.read_text().splitlines()[0])
    assert set(first) == {"id", "dataset", "category", "query", "reference", "outcomes"}
    assert set(next(iter(first["outcomes"].values()))) == {
        "response",
        "score",
        "cost_usd",
        "input_tokens",
        "output_tokens",
    }


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


def test_jsonl_skip_invalid_counts(tmp_path: Path) -> None:
    lines = [_line(), "{not json", _line(id="q3", score=1), _line(id="q4")]
    path = _write_lines(tmp_path / "mine.jsonl", lines)
    loaded = load_jsonl(path, skip_invalid=True)
    assert [r.id for r in loaded.records] == ["q1", "q4"]
    assert loaded.skipped == 2


def test_jsonl_duplicate_ids_are_an_error(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "mine.jsonl", [_line(), _line()])
    with pytest.raises(RecordingError, match="duplicate record ids"):
        load_jsonl(path)


def test_record_rejects_nan_cost() -> None:
    with pytest.raises(ValueError, match="cost_usd"):
        Record.model_validate_json(_line(outcomes={"m": {"score": 1.0, "cost_usd": "NaN"}}))


def test_corrupted_zip_is_a_clear_error(data_dir: Path, tmp_path: Path) -> None:
    source = data_dir / "mmlu-pro" / "model_outputs_mathstral-7B_5shots.zip"
    broken = tmp_path / source.name
    broken.write_bytes(source.read_bytes()[:10_000])
    with pytest.raises(RecordingError, match="not a readable zip.*emafusion data fetch"):
        read_mmlu_pro_zip(broken)


def test_mmlu_pro_zip_skips_non_records(tmp_path: Path) -> None:
    path = tmp_path / "model_outputs_tiny_5shots.zip"
    rows = [
        {
            "question_id": 1,
            "question": "Q?",
            "options": ["x", "y"],
            "answer": "B",
            "category": "math",
            "pred": "B",
            "model_outputs": "The answer is (B).",
        },
        "other",
        {
            "question_id": 2,
            "question": "R?",
            "options": ["x", "y"],
            "answer": "A",
            "category": "law",
            "pred": None,
            "model_outputs": "unsure",
        },
    ]
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model_outputs_tiny_5shots.json", json.dumps(rows))
    records = load_mmlu_pro([path])
    assert [r.outcomes["tiny"].score for r in records.records] == [1.0, 0.0]
    assert records.records[0].query == "Q?\nA. x\nB. y"
    assert "skipped 1" in records.notes[0]


def test_routerbench_broken_list_literal_names_file_line_column(
    data_dir: Path, tmp_path: Path
) -> None:
    source = data_dir / "routerbench" / "winograde_test.csv"
    lines = source.read_text().splitlines(keepends=True)
    target = next(i for i, line in enumerate(lines) if "['B\\n']" in line and i > 0)
    lines[target] = lines[target].replace("['B\\n']", "['B\\n'", 1)
    broken = tmp_path / "winograde_test.csv"
    broken.write_text("".join(lines))
    with pytest.raises(RecordingError) as err:
        load_routerbench([broken])
    message = str(err.value)
    assert str(broken) in message
    assert re.search(r"line \d+", message)
    assert "model_response" in message and "list literal" in message


def test_modified_recording_fails_its_checksum(data_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "data"
    shutil.copytree(data_dir / "routerbench", copy / "routerbench")
    target = copy / "routerbench" / "winograde_test.csv"
    target.chmod(0o644)
    target.write_bytes(target.read_bytes().replace(b"Answer:", b"Answer;", 1))
    with pytest.raises(ChecksumMismatchError, match="winograde_test.csv.*emafusion data fetch"):
        dataset_files("routerbench", copy, download=False)


def test_atomic_write_keeps_a_readable_mode(tmp_path: Path) -> None:
    from emafusion.stores.atomic import write_text_atomic

    fresh = write_text_atomic(tmp_path / "out" / "results.json", "{}")
    assert fresh.stat().st_mode & 0o777 == 0o644
    fresh.chmod(0o600)
    write_text_atomic(fresh, "{ }")
    assert fresh.stat().st_mode & 0o777 == 0o600 and fresh.read_text() == "{ }"
    assert [p.name for p in fresh.parent.iterdir()] == ["results.json"]
