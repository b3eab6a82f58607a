"""The loaders read the published files right: the data README's figures, from the real files."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest

from emafusion.stores.download import ChecksumMismatchError, dataset_files
from emafusion.stores.recordings import (
    RecordingError,
    RecordSet,
    embedding_text,
    load_jsonl,
    load_routerbench,
    read_mmlu_pro_zip,
    split_of,
    write_jsonl,
)

pytestmark = pytest.mark.slow


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


def test_corrupted_zip_is_a_clear_error(data_dir: Path, tmp_path: Path) -> None:
    source = data_dir / "mmlu-pro" / "model_outputs_mathstral-7B_5shots.zip"
    broken = tmp_path / source.name
    broken.write_bytes(source.read_bytes()[:10_000])
    with pytest.raises(RecordingError, match="not a readable zip.*emafusion data fetch"):
        read_mmlu_pro_zip(broken)


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


def test_published_files_fill_an_empty_cache_from_a_mirror(
    file_server: tuple[str, Path], data_dir: Path, tmp_path: Path
) -> None:
    from emafusion.stores.download import DATA_MIRROR_ENV, SOURCES, resolve_data_dir, sha256_of

    base, root = file_server
    shutil.copytree(data_dir / "routerbench", root / "routerbench")
    cache = tmp_path / "cache"
    env = {DATA_MIRROR_ENV: base}
    resolved = resolve_data_dir(env=env, shared_candidates=[], cache_dir=cache)
    paths = dataset_files("routerbench", resolved, env=env)
    assert [p.name for p in paths] == [s.name for s in SOURCES["routerbench"]]
    assert all(sha256_of(p) == s.sha256 for p, s in zip(paths, SOURCES["routerbench"], strict=True))
