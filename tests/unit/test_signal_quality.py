"""The stopping signal's report: AUROC only where right and wrong answers both exist."""

from __future__ import annotations

from emafusion.evals.signal_quality import MIN_ROWS, _row, signal_quality_markdown


def test_auroc_needs_enough_answers_and_both_outcomes() -> None:
    n = MIN_ROWS
    separated = _row("level 1", [0.9] * n + [0.1] * n, [True] * n + [False] * n)
    assert separated["auroc"] == 1.0 and separated["n"] == 2 * n and separated["right"] == 0.5
    inverted = _row("level 2", [0.1] * n + [0.9] * n, [True] * n + [False] * n)
    assert inverted["auroc"] == 0.0
    assert _row("few", [0.9, 0.1], [True, False])["auroc"] is None
    assert _row("all right", [0.5] * n, [True] * n)["auroc"] is None


def test_weak_levels_are_named_in_the_report() -> None:
    n = MIN_ROWS
    strong = _row("level 1", [0.9] * n + [0.1] * n, [True] * n + [False] * n)
    coin = _row("level 2", [0.5] * (2 * n), [True, False] * n)
    lines = signal_quality_markdown({"levels": [strong, coin], "categories": []}, "a > b")
    assert any(line.startswith("| level 2 |") and line.endswith("| 0.5000 |") for line in lines)
    assert lines[-1] == "Weak separation (AUROC < 0.7): level 2."
