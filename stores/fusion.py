"""The fusion model, as served: how answer votes are weighed and how sure the fused answer
is, fitted on cross-fitted train traces by `emafusion.train.fusion` and saved beside the
memory as ``fusion.json``.

A vote is weighed by its model's reliability on the query's kind (its training accuracy
by category, mixed by the classifier's probabilities, shrunk toward its overall accuracy by
`smoothing` pseudo-counts). The calibrator turns the fused posterior and the agreement
pattern (`FEATURES`) into P(the fused answer is right): a logistic regression.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emafusion.stores.atomic import write_json_atomic

FUSION_JSON = "fusion.json"
FORMAT_VERSION = 1
FEATURES = ("log_odds", "votes", "answered", "groups", "top_reliability", "stage")


class FusionError(ValueError):
    """A fusion model that cannot be loaded or used; says the fix."""


@dataclass(frozen=True)
class FusionModel:
    # Pseudo-counts shrinking a model's accuracy in a category toward its overall one.
    smoothing: float = 10.0
    # Options an open (not multiple-choice) question is taken to have when fusing.
    open_options: int = 20
    # Cosine at which two free-form answers count as the same answer.
    semantic_threshold: float = 0.9
    # P(right) = sigmoid(intercept + coef . features); empty coef: the raw posterior.
    coef: tuple[float, ...] = ()
    intercept: float = 0.0
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.coef and len(self.coef) != len(FEATURES):
            raise FusionError(f"fusion calibrator needs {len(FEATURES)} coefficients")
        if not all(math.isfinite(c) for c in (*self.coef, self.intercept, self.smoothing)):
            raise FusionError("fusion model coefficients must be finite")
        if self.smoothing < 0 or self.open_options < 2:
            raise FusionError("fusion smoothing must be >= 0 and open_options >= 2")

    def calibrated(self, features: Sequence[float]) -> float | None:
        """P(right) of a fused answer with these features; None without a calibrator."""
        if not self.coef:
            return None
        z = self.intercept + sum(c * x for c, x in zip(self.coef, features, strict=True))
        return 0.5 * (1.0 + math.tanh(0.5 * z))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "smoothing": self.smoothing,
            "open_options": self.open_options,
            "semantic_threshold": self.semantic_threshold,
            "features": list(FEATURES),
            "coef": list(self.coef),
            "intercept": self.intercept,
            "info": dict(self.info),
        }

    def save(self, directory: Path | str) -> Path:
        return write_json_atomic(Path(directory) / FUSION_JSON, self.to_dict())


def load_fusion(directory: Path | str) -> FusionModel | None:
    """The fusion model saved in a router directory, or None when none was fitted."""
    path = Path(directory) / FUSION_JSON
    if not path.exists():
        return None
    fix = "Fix: rerun `emafusion eval` (it fits the fusion model) for this router directory."
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FusionError(f"{path}: unreadable ({exc}). {fix}") from exc
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
        raise FusionError(f"{path}: not a fusion model of format {FORMAT_VERSION}. {fix}")
    if data.get("features", list(FEATURES)) != list(FEATURES):
        raise FusionError(f"{path}: fitted on features {data.get('features')}. {fix}")
    try:
        return FusionModel(
            smoothing=float(data["smoothing"]),
            open_options=int(data["open_options"]),
            semantic_threshold=float(data["semantic_threshold"]),
            coef=tuple(float(c) for c in data["coef"]),
            intercept=float(data["intercept"]),
            info=dict(data.get("info", {})),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise FusionError(f"{path}: invalid field ({exc}). {fix}") from exc
