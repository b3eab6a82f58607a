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
model is `degraded` when its recent mean residual lies below the mean residual it had on
validation (the memory's steady bias for it) by more than `DEGRADED_Z` standard errors
(the validation residuals' spread over the effective number of recent outcomes). Judged
outcomes (beliefs, `emafusion.stores.judged`) count as residuals at their measured weight.
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


@dataclass
class _Sums:
    weight: float = 0.0
    residual: float = 0.0
    weight_sq: float = 0.0  # sum of squared (decayed) weights: the effective count


@dataclass
class RecentResiduals:
    """Per model, the decayed mean residual of its live ground-truth outcomes."""

    half_life: float = DEFAULT_HALF_LIFE  # in the model's feedback outcomes; inf: no decay
    pseudo_count: float = PSEUDO_COUNT
    # Per model, (mean, standard deviation) of its residuals on validation (no drift there).
    baseline: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    _sums: dict[str, _Sums] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, model: str, score: float, predicted: float, weight: float = 1.0) -> None:
        """One live outcome of `model` where the memory predicted `predicted`: ground truth
        (weight 1) or a judged belief at its measured weight."""
        if weight <= 0:
            return
        keep = 1.0 if math.isinf(self.half_life) else 0.5 ** (1.0 / self.half_life)
        with self._lock:
            sums = self._sums.setdefault(model, _Sums())
            sums.weight = sums.weight * keep + weight
            sums.residual = sums.residual * keep + weight * (float(score) - float(predicted))
            sums.weight_sq = sums.weight_sq * keep * keep + weight * weight

    def offset(self, model: str) -> float:
        with self._lock:
            sums = self._sums.get(model)
            if sums is None:
                return 0.0
            return sums.residual / (sums.weight + self.pseudo_count)

    def degraded(self, model: str) -> bool:
        """Whether `model`'s recent residuals lie significantly below its validation ones
        (False without a validation baseline for it, or with too few recent outcomes)."""
        baseline = self.baseline.get(model)
        with self._lock:
            sums = self._sums.get(model)
            if baseline is None or sums is None or sums.weight_sq <= 0:
                return False
            n_eff = sums.weight * sums.weight / sums.weight_sq
            mean = sums.residual / sums.weight
        bias, spread = baseline
        if n_eff < MIN_DEGRADED_OUTCOMES or spread <= 0:
            return False
        return mean - bias < -DEGRADED_Z * spread / math.sqrt(n_eff)

    @classmethod
    def from_json(cls, data: object) -> RecentResiduals:
        """The manifest's choice; routers built before it get `DEFAULT_HALF_LIFE`. A damaged
        entry is an error, not a silent default."""
        if data is None:
            return cls()
        problem = "ROUTER.json: 'drift' must hold a half_life > 0 (or null: no decay)"
        fix = (
            "Fix: rebuild the router into an empty directory (`emafusion memory build --out DIR`)."
        )
        half_life = data.get("half_life", 0) if isinstance(data, Mapping) else 0
        if half_life is None:
            half_life = math.inf
        if not (
            isinstance(half_life, int | float) and not isinstance(half_life, bool) and half_life > 0
        ):
            raise ValueError(f"{problem}, got {data!r}. {fix}")
        assert isinstance(data, Mapping)
        baseline = data.get("baseline", {})
        if not isinstance(baseline, Mapping) or any(
            not isinstance(v, list | tuple)
            or len(v) != 2
            or any(isinstance(x, bool) or not isinstance(x, int | float) for x in v)
            for v in baseline.values()
        ):
            raise ValueError(
                f"ROUTER.json: 'drift'.'baseline' must map each model to [mean, sd] of its "
                f"validation residuals, got {baseline!r}. {fix}"
            )
        return cls(
            half_life=float(half_life),
            baseline={str(m): (float(v[0]), float(v[1])) for m, v in baseline.items()},
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
        "baseline": {
            m: [float(r.mean()), float(r.std())] for m, r in sorted(arrays.items()) if len(r) > 1
        },
        "pseudo_count": PSEUDO_COUNT,
        "residuals": n,
        "mean_squared_error": {
            ("inf" if math.isinf(h) else f"{h:g}"): e / max(1, n) for h, e in errors.items()
        },
        "method": "prequential squared error of the running offset on validation, seeded order",
    }
