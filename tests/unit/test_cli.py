"""The `emafusion` command without recordings: help, bad input, the graph picture."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from emafusion.cli.main import main

COMMANDS = {
    "data": ("check", "export", "fetch", "path"),
    "memory": ("build", "report"),
    "judges": ("train", "report", "evidence", "threshold"),
    "ask": ("--record-id", "--threshold", "--budget", "--stream"),
    "graph": ("--format", "--out"),
    "eval": ("--dataset", "--limit", "--no-progress"),
    "feedback": ("--run-id", "--query-id", "--model", "--score"),
    "serve": ("--router-dir", "--host", "--api-keys-file", "--api-keys-env"),
    "stream": ("--scenario", "--feedback", "--recordings", "--out"),
}


def _help(*args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "emafusion.cli.main", *args, "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_help_lists_every_command_and_each_its_actions() -> None:
    top = _help()
    listed = re.findall(r"^    (\w+) {2,}\S", top, re.MULTILINE)
    assert set(listed) == set(COMMANDS)
    for command, actions in COMMANDS.items():
        text = _help(command)
        missing = [a for a in actions if a not in text]
        assert not missing, f"`emafusion {command} --help` does not mention {missing}"


def test_bad_recordings_exit_2_with_the_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a"}\n')
    assert main(["data", "check", "--recordings", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:1" in err and "Fix" in err


def test_bad_settings_exit_2_naming_the_field(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["ask", "--dataset", "routerbench", "--budget", "-1", "what?"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "budget_usd" in err and "greater than or equal to 0" in err
    assert main(["ask", "--max-levels", "0", "what?"]) == 2
    assert "max_levels" in capsys.readouterr().err


def test_graph_command_renders_mermaid_and_dot(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["graph", "--format", "mermaid"]) == 0
    mermaid = capsys.readouterr().out
    assert mermaid.startswith("graph TD;")
    nodes = ("classify", "predict", "invoke_model", "gather", "judge", "decide", "finalize")
    for node in (*nodes, "record"):
        assert f"{node}[" in mermaid
    assert "-.->|escalate: next stage| invoke_model" in mermaid
    assert main(["graph", "--format", "dot", "--out", str(tmp_path / "g.dot")]) == 0
    assert '"gather" -> "judge"' in (tmp_path / "g.dot").read_text()


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` not installed")
def test_graph_command_renders_png(tmp_path: Path) -> None:
    out = tmp_path / "router.png"
    assert main(["graph", "--format", "png", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ask_leaves_what_it_is_not_told_to_the_preset() -> None:
    from emafusion.cli.ask import context_from_args
    from emafusion.cli.main import build_parser

    plain = context_from_args(build_parser().parse_args(["ask", "what?"]))
    # Set fields override the preset (nodes/settings.py): a default passed explicitly would
    # silently replace the evaluated threshold and level cap.
    assert plain.model_fields_set == {"record_outcomes"}
    told = context_from_args(
        build_parser().parse_args(["ask", "--preset", "cheap", "--threshold", "0.9", "what?"])
    )
    assert told.model_fields_set == {"preset", "escalation_threshold", "record_outcomes"}
    assert (told.preset, told.escalation_threshold) == ("cheap", 0.9)


def test_building_the_parser_loads_no_graph_model_or_index_library() -> None:
    code = (
        "import sys\n"
        "from emafusion.cli.main import build_parser\n"
        "build_parser().format_help()\n"
        "heavy = {'langgraph', 'langchain_core', 'faiss', 'torch', 'onnxruntime', 'fastapi'}\n"
        "print(sorted(heavy & {name.split('.')[0] for name in sys.modules}))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]", f"`emafusion --help` imports {loaded}"
