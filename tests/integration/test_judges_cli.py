"""`emafusion judges train|report` end to end on a RouterBench slice."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from emafusion.cli.judges import add_judges_commands
from emafusion.stores.pool import default_pool_path
from emafusion.stores.recordings import RecordSet, write_jsonl
from emafusion.train.judges import JudgesError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emafusion")
    add_judges_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def test_judges_train_and_report(
    routerbench: RecordSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = (
        routerbench.split("train")[:120]
        + routerbench.split("validation")[:40]
        + routerbench.split("test")[:24]
    )
    recordings = tmp_path / "rb.jsonl"
    write_jsonl(records, recordings)
    common = [
        "--recordings",
        str(recordings),
        "--pool",
        str(default_pool_path("routerbench")),
        "--router-dir",
        str(tmp_path / "router"),
    ]
    args = _parser().parse_args(["judges", "train", *common])
    assert args.handler(args) == 0
    trained = capsys.readouterr().out
    for name in ("verifier.npz", "verifier.json", "combiner.json", "ROUTER.json"):
        assert (tmp_path / "router" / name).is_file()
    assert "validation AUROC verifier" in trained
    assert "combiner=" in trained and "escalation_threshold=" in trained

    args = _parser().parse_args(["judges", "report", *common, "--max-escalation-rate", "0.3"])
    assert args.handler(args) == 0
    report = capsys.readouterr().out
    assert "## Judges on test" in report
    for judge in ("memory_prior", "answer_format", "agreement", "verifier"):
        assert re.search(rf"^{judge} +\d", report, re.MULTILINE)
        assert f"learned, without {judge}" in report
    assert "combined: static mean" in report and "combined: learned" in report
    assert "calibration (ECE, test): static mean" in report
    assert "most accurate threshold escalating <= 30.0% of queries" in report
    # The policy's replay of the traces that choose thresholds agrees with the graph exactly.
    assert "matches these graph runs within 0.0e+00" in report

    bad = _parser().parse_args(["judges", "report", *common, "--judges", "oracle"])
    with pytest.raises(JudgesError, match="unknown judge 'oracle'"):
        bad.handler(bad)
