"""The router metrics (hull, AIQ, APGR, CPT, bootstrap) on known points."""

from __future__ import annotations

import math

import pytest

from emafusion.evals.metrics import aiq, apgr, bootstrap_gain, cpt, upper_hull


def test_router_metrics_on_known_points() -> None:
    singles = [(1.0, 0.5), (2.0, 0.6), (10.0, 0.9)]
    # (3.0, 0.55) costs more than (2.0, 0.6) for less; (2.0, 0.6) lies above the chord.
    assert upper_hull([*singles, (3.0, 0.55)]) == singles
    assert upper_hull([(1.0, 0.5), (5.0, 0.6), (10.0, 0.9)]) == [(1.0, 0.5), (10.0, 0.9)]
    # The zero router's AIQ is its own hull's mean; a router on the strong model's
    # accuracy at the weak model's cost dominates it.
    assert aiq([(1.0, 0.9)], singles) == pytest.approx(0.9)
    assert aiq(singles, singles) < 0.9
    weak, strong = (1.0, 0.5), (10.0, 0.9)
    assert apgr([(1.0, 0.9)], weak, strong) == pytest.approx(1.0, abs=1e-3)
    # Mixing weak and (5.5, 0.72) reaches PGR 0.5 (accuracy 0.7) at cost 5.09: x = 0.455.
    assert cpt([(5.5, 0.72)], weak, strong, 0.5) == pytest.approx(0.4545, abs=2e-3)
    assert math.isnan(cpt([(5.5, 0.6)], weak, strong, 0.5))  # PGR never reaches 0.5
    gain, low, high = bootstrap_gain([1, 1, 0, 1] * 50, [1, 0, 0, 1] * 50)
    assert gain == pytest.approx(0.25) and low < gain < high
