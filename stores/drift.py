"""Drift: a model whose recent answers go worse than the memory predicts loses traffic.

The kNN memory weighs a fresh outcome like any of the thousands of training outcomes near
it, so a model that degrades everywhere moves its predictions by a few neighbours at a
time. Each ground-truth outcome received live (feedback) is also a residual: the score
minus what the memory predicted for that model on that query. Per model, the residuals
are averaged with a half-life counted in that model's feedback outcomes and shrunk toward
zero by a pseudo-count; the result is added to the memory's predictions of the model.

The half-life is chosen on data: on the validation queries in a seeded order, each
candidate half-life's running offset predicts the next outcome (prequential squared
error), and the best one is kept in the router's manifest. Recordings without drift pick
a long half-life, and the offset then only corrects a steady bias; a model that starts
failing moves the offset as fast as its feedback arrives.

A fixed plan (a preset's stages) reads no prediction, so it learns by a test instead: a
model is `degraded` when its recent mean residual lies below the mean residual it had in
the same plan's runs on validation by more than `DEGRADED_Z` standard errors (the
validation residuals' spread over the effective number of recent outcomes). The baseline
is the plan's own (`JudgedEvidence.baseline`): a model a plan calls only on hard queries
has residuals below the memory's everywhere-average, which is no drift. Ground-truth and
judged residuals (beliefs, `emafusion.stores.judged`) are tested apart, each against its
own baseline; only runs on the plan the baseline was measured for feed the test. "Recent"
is the offset's half-life, capped at `MAX_TEST_HALF_LIFE` outcomes, so the test forgets: a
dropped model keeps being tried on a small share of queries, and one that recovered clears.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

HALF_LIVES: tuple[float, ...] = (25.0, 50.0, 100.0, 200.0, 400.0, 800.0, math.inf)
PSEUDO_COUNT = 10.0  # residuals it takes to move the offset halfway to their mean
DEFAULT_HALF_LIFE = 200.0  # routers built before the choice was made
# A one-sided test at 3 standard errors (false alarm 0.13% per look) before a fixed plan
# drops a model: conventional, not fitted; the plan changes only on strong evidence.
DEGRADED_Z = 3.0
MIN_DEGRADED_OUTCOMES = 10.0  # effective recent outcomes before the test may speak
# The test reads at most this recent a window (a half-life in the model's outcomes) even when
# the offset's chosen half-life is longer or infinite: a test that never forgets would keep a
# model that recovered dropped until its good outcomes outnumbered a lifetime of bad ones.
MAX_TEST_HALF_LIFE = 200.0


@dataclass
class _Sums:
    weight: float = 0.0
    residual: float = 0.0
    weight_sq: float = 0.0  # sum of squared (decayed) weights: the effective count

    def add(self, residual: float, keep: float) -> None:
        self.weight = self.weight * keep + 1.0
        self.residual = self.residual * keep + residual
        self.weight_sq = self.weight_sq * keep * keep + 1.0


Source = str  # "truth" (feedback) or "judged" (beliefs)


@dataclass
class RecentResiduals:
    """Per model, the decayed mean residual of its live ground-truth outcomes (the offset),
    and per source the residuals the degradation test reads."""

    half_life: float = DEFAULT_HALF_LIFE  # in the model's feedback outcomes; inf: no decay
    pseudo_count: float = PSEUDO_COUNT
    # Per source, per model: (mean, sd) of its residuals in the plan's validation runs.
    baseline: Mapping[Source, Mapping[str, tuple[float, float]]] = field(default_factory=dict)
    _sums: dict[str, _Sums] = field(default_factory=dict)
    _tested: dict[tuple[Source, str], _Sums] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def _keep(self) -> float:
        return 1.0 if math.isinf(self.half_life) else 0.5 ** (1.0 / self.half_life)

    @property
    def _test_keep(self) -> float:
        return 0.5 ** (1.0 / min(self.half_life, MAX_TEST_HALF_LIFE))

    def observe(self, model: str, score: float, predicted: float, tested: bool = True) -> None:
        """One ground-truth outcome of `model` where the memory predicted `predicted`;
        `tested`: the run was on the plan the degradation test's baseline is for."""
        residual = float(score) - float(predicted)
        with self._lock:
            self._sums.setdefault(model, _Sums()).add(residual, self._keep)
            if tested:
                self._tested.setdefault(("truth", model), _Sums()).add(residual, self._test_keep)

    def observe_judged(self, model: str, belief: float, predicted: float) -> None:
        """One judged outcome (a calibrated belief) of a run on the tested plan: the test
        reads it, the offset does not."""
        with self._lock:
            sums = self._tested.setdefault(("judged", model), _Sums())
            sums.add(float(belief) - float(predicted), self._test_keep)

    def offset(self, model: str) -> float:
        with self._lock:
            sums = self._sums.get(model)
            if sums is None:
                return 0.0
            return sums.residual / (sums.weight + self.pseudo_count)

    def degraded(self, model: str) -> bool:
        """Whether `model`'s recent residuals of either source lie significantly below the
        plan's validation ones (never without a baseline or with too few outcomes)."""
        for source, models in self.baseline.items():
            baseline = models.get(model)
            with self._lock:
                sums = self._tested.get((source, model))
                if baseline is None or sums is None or sums.weight_sq <= 0:
                    continue
                n_eff = sums.weight * sums.weight / sums.weight_sq
                mean = sums.residual / sums.weight
            bias, spread = baseline
            enough = n_eff >= MIN_DEGRADED_OUTCOMES and spread > 0
            if enough and mean - bias < -DEGRADED_Z * spread / math.sqrt(n_eff):
                return True
        return False

    @classmethod
    def from_json(cls, data: object) -> RecentResiduals:
        """The manifest's choice; routers built before it get `DEFAULT_HALF_LIFE`. A damaged
        entry is an error, not a silent default."""
        if data is None:
            return cls()
        half_life = data.get("half_life", 0) if isinstance(data, Mapping) else 0
        if half_life is None:
            return cls(half_life=math.inf)
        if isinstance(half_life, int | float) and not isinstance(half_life, bool) and half_life > 0:
            return cls(half_life=float(half_life))
        raise ValueError(
            f"ROUTER.json: 'drift' must hold a half_life > 0 (or null: no decay), got "
            f"{data!r}. Fix: rebuild the router into an empty directory "
            f"(`emafusion memory build --out DIR`)."
        )


def _prequential_error(residuals: np.ndarray, half_life: float) -> float:
    """Squared error of predicting each residual by the running offset before it."""
    keep = 1.0 if math.isinf(half_life) else 0.5 ** (1.0 / half_life)
    weight = total = error = 0.0
    for r in residuals:
        offset = total / (weight + PSEUDO_COUNT)
        error += (r - offset) ** 2
        weight, total = weight * keep + 1.0, total * keep + r
    return error


def choose_half_life(residuals: Mapping[str, Sequence[float]]) -> dict[str, Any]:
    """The half-life with the least prequential error over every model's residual sequence
    (validation queries in a seeded order), with each candidate's error."""
    arrays = {m: np.asarray(r, dtype=np.float64) for m, r in residuals.items() if len(r)}
    errors = {h: sum(_prequential_error(r, h) for r in arrays.values()) for h in HALF_LIVES}
    n = sum(len(r) for r in arrays.values())
    best = min(HALF_LIVES, key=lambda h: (errors[h], -h))
    return {
        "half_life": None if math.isinf(best) else best,
        "pseudo_count": PSEUDO_COUNT,
        "residuals": n,
        "mean_squared_error": {
            ("inf" if math.isinf(h) else f"{h:g}"): e / max(1, n) for h, e in errors.items()
        },
        "method": "prequential squared error of the running offset on validation, seeded order",
    }
