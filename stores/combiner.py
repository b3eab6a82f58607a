"""The learned combiner of judge scores, as served: `LearnedCombiner` is a logistic
regression on each judge's log-odds (and whether it abstained), fitted on validation
outcomes by `emafusion.train.combiner`, so that "0.8" means right about 80% of the time.
`CombinerBook` keeps one per judge subset (dropping a judge refits, it does not zero a
weight) and is saved beside the memory as ``combiner.json``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emafusion.stores.atomic import write_json_atomic

COMBINER_JSON = "combiner.json"
FORMAT_VERSION = 1
# Judge scores are clipped away from 0 and 1 before taking log-odds: a hard 0/1 judge
# (answer format) becomes a large but finite vote the regression can weigh.
_EPS = 1e-3
MAX_JUDGES_FOR_SEARCH = 10


class CombinerError(ValueError):
    """A combiner or threshold that cannot be fitted, found or loaded; says the fix."""


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1.0 - _EPS)
    return np.log(p / (1.0 - p))


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def subset_key(judges: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(judges)))


# --- the learned combiner --------------------------------------------------------------------


@dataclass(frozen=True)
class LearnedCombiner:
    """P(correct) = sigmoid(b + sum_j w_j * logit(s_j) + a_j * [judge j abstained])."""

    judges: tuple[str, ...]
    weights: np.ndarray  # (judges,) on log-odds
    abstain: np.ndarray  # (judges,) added when the judge abstained
    intercept: float
    info: dict[str, Any] = field(default_factory=dict)

    def predict(self, scores: np.ndarray) -> np.ndarray:
        """Combined confidence of each row of `scores` (answers, judges), NaN = abstained."""
        scores = np.asarray(scores, dtype=np.float64).reshape(-1, len(self.judges))
        return sigmoid(
            design_matrix(scores) @ np.concatenate([self.weights, self.abstain]) + self.intercept
        )

    def combine(self, by_judge: Mapping[str, float | None]) -> float:
        """One answer's confidence; a judge that is absent or None abstained."""
        row = np.array(
            [[np.nan if by_judge.get(j) is None else by_judge[j] for j in self.judges]],
            dtype=np.float64,
        )
        return float(self.predict(row)[0])

    def to_dict(self) -> dict[str, Any]:
        return {
            "judges": list(self.judges),
            "weights": self.weights.tolist(),
            "abstain": self.abstain.tolist(),
            "intercept": self.intercept,
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LearnedCombiner:
        judges = tuple(str(j) for j in data["judges"])
        weights = np.asarray(data["weights"], dtype=np.float64)
        abstain = np.asarray(data["abstain"], dtype=np.float64)
        intercept = float(data["intercept"])
        if weights.shape != (len(judges),) or abstain.shape != (len(judges),):
            raise CombinerError(f"combiner for {list(judges)}: one weight per judge expected")
        if not (np.isfinite(weights).all() and np.isfinite(abstain).all()) or not math.isfinite(
            intercept
        ):
            raise CombinerError(f"combiner for {list(judges)}: non-finite coefficients")
        return cls(judges, weights, abstain, intercept, dict(data.get("info", {})))


def design_matrix(scores: np.ndarray) -> np.ndarray:
    abstained = np.isnan(scores)
    return np.hstack([np.where(abstained, 0.0, _logit(np.nan_to_num(scores))), abstained])


# --- a combiner per judge subset -------------------------------------------------------------


@dataclass
class CombinerBook:
    """Learned combiners keyed by judge subset (sorted names), plus what they came from."""

    combiners: dict[tuple[str, ...], LearnedCombiner]
    info: dict[str, Any] = field(default_factory=dict)

    def get(self, judges: Iterable[str]) -> LearnedCombiner:
        key = subset_key(judges)
        try:
            return self.combiners[key]
        except KeyError:
            known = sorted("+".join(k) for k in self.combiners)
            raise CombinerError(
                f"no learned combiner for judges {list(key)}; fitted subsets: "
                f"{', '.join(known) or 'none'}. Fix: set Context.judges to a fitted subset, "
                f"use combiner='static', or rerun `emafusion judges train` with these judges."
            ) from None

    def save(self, directory: Path | str) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        data = {
            "format_version": FORMAT_VERSION,
            "combiners": [c.to_dict() for _, c in sorted(self.combiners.items())],
            "info": self.info,
        }
        write_json_atomic(directory / COMBINER_JSON, data)
        return directory / COMBINER_JSON

    @classmethod
    def load(cls, directory: Path | str) -> CombinerBook:
        path = Path(directory) / COMBINER_JSON
        fix = f"Fix: refit with `emafusion judges train --router-dir {Path(directory)}`."
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CombinerError(f"{path}: unreadable ({exc}). {fix}") from exc
        if data.get("format_version") != FORMAT_VERSION:
            raise CombinerError(
                f"{path}: format_version {data.get('format_version')!r}, this emafusion reads "
                f"{FORMAT_VERSION}. {fix}"
            )
        try:
            combiners = [LearnedCombiner.from_dict(c) for c in data["combiners"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise CombinerError(f"{path}: invalid combiner entry ({exc}). {fix}") from exc
        return cls({subset_key(c.judges): c for c in combiners}, dict(data.get("info", {})))


def load_combiners(directory: Path | str) -> CombinerBook | None:
    """The combiners saved in a router directory, or None when none were fitted there."""
    if not (Path(directory) / COMBINER_JSON).exists():
        return None
    return CombinerBook.load(directory)
