"""The `emafusion` command on the real recordings, run as a user runs it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from emafusion.cli.main import main
from emafusion.stores.artifacts import build_router_artifacts
from emafusion.stores.embeddings import Embedder
from emafusion.stores.pool import load_default_pool
from emafusion.stores.recordings import RecordSet, write_jsonl
from emafusion.stores.taxonomy import default_taxonomy_path, load_taxonomy


def test_data_check_routerbench(capsys: pytest.CaptureFixture[str], data_dir: Path) -> None:
    assert main(["data", "check", "--dataset", "routerbench", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert "gpt-4-1106-preview" in out and "0.9101" in out and "4.363" in out
    assert "splits: train" in out


def test_export_then_check_own_recordings(
    capsys: pytest.CaptureFixture[str], routerbench: RecordSet, tmp_path: Path
) -> None:
    path = tmp_path / "mine.jsonl"
    write_jsonl(routerbench.records[:100], path)
    assert main(["data", "check", "--recordings", str(path)]) == 0
    out = capsys.readouterr().out
    assert "100 records" in out
    assert "train" in out


def test_ask_replays_a_recorded_query(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    routerbench: RecordSet,
    routerbench_slice: RecordSet,
    embedder: Embedder,
) -> None:
    taxonomy = load_taxonomy(default_taxonomy_path("routerbench"))
    pool = load_default_pool("routerbench")
    router_dir = build_router_artifacts(routerbench_slice, embedder, taxonomy, pool).save(
        tmp_path / "router"
    )
    record = routerbench.split("test")[0]
    argv = [
        "ask",
        "--dataset",
        "routerbench",
        "--record-id",
        record.id,
        "--no-record",
        "--router-dir",
        str(router_dir),
        "--stream",
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    classified = re.search(
        r"^\[classified: (arc-challenge|winogrande) \(\d\.\d\d\) -> (taxonomy|learned)\]$",
        captured.err,
        re.MULTILINE,
    )
    assert classified is not None, captured.err
    assert "[returned:" in captured.err
    model = next(
        line.split()[-1] for line in captured.out.splitlines() if line.startswith("model:")
    )
    assert f"answer:     {record.outcomes[model].response.strip()}" in captured.out  # type: ignore[union-attr]
    assert "cost:       $" in captured.out and "estimated" not in captured.out


def test_ask_unknown_record_id_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], data_dir_env: Path
) -> None:
    assert main(["ask", "--dataset", "routerbench", "--record-id", "routerbench/nope"]) == 2
    assert "record 'routerbench/nope' is not in the recordings routerbench" in (
        capsys.readouterr().err
    )
