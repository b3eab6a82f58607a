"""The `emafusion` command, run as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from emafusion.graph.cli import main
from emafusion.stores.recordings import RecordSet, write_jsonl


def test_help_lists_every_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "emafusion.graph.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "data" in out
    data_help = subprocess.run(
        [sys.executable, "-m", "emafusion.graph.cli", "data", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for action in ("check", "export", "fetch", "path"):
        assert action in data_help


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


def test_bad_recordings_exit_2_with_the_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a"}\n')
    assert main(["data", "check", "--recordings", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:1" in err and "Fix" in err
