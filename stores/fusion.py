"""The fusion model, as served: how answer votes are weighed and how sure the fused answer
is, fitted on cross-fitted train traces by `emafusion.train.fusion` and saved beside the
memory as ``fusion.json``.

A vote is weighed by its model's reliability on the query's kind (its training accuracy
by category, mixed by the classifier's probabilities, shrunk toward its overall accuracy by
`smoothing` pseudo-counts). The calibrator turns the fused posterior, the agreement
pattern and the outcome memory's per-query view of the answering models (`FEATURES`) into
P(the fused answer is right): a logistic regression.

Format 2 added the memory features (`MEMORY_FEATURES`). A calibrator saved on fewer features
(format 1) loads as the same calibrator with a zero weight on each feature it lacks: its
confidences are what they were.
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
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
AGREEMENT_FEATURES = ("log_odds", "votes", "answered", "groups", "top_reliability", "stage")
# The outcome memory's kNN P(success) on this very query (`policy.fuse` says how they are
# made of the attempts' `memory_p`).
MEMORY_FEATURES = ("memory_p", "memory_log_odds")
FEATURES = (*AGREEMENT_FEATURES, *MEMORY_FEATURES)
# What a format-1 file without a feature list was fitted on.
_FORMAT_1_FEATURES = AGREEMENT_FEATURES


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
    version = data.get("format_version") if isinstance(data, dict) else None
    if not isinstance(data, dict) or version not in READABLE_VERSIONS:
        raise FusionError(
            f"{path}: not a fusion model of format {' or '.join(map(str, READABLE_VERSIONS))} "
            f"(format_version {version!r}). {fix}"
        )
    default = list(_FORMAT_1_FEATURES if version == 1 else FEATURES)
    names = data.get("features", default)
    if (
        not isinstance(names, list)
        or len(set(map(str, names))) != len(names)
        or not set(map(str, names)) <= set(FEATURES)
    ):
        raise FusionError(
            f"{path}: fitted on features {names!r}; this version reads a subset of "
            f"{list(FEATURES)}. {fix}"
        )
    try:
        coef = [float(c) for c in data["coef"]]
        if coef and len(coef) != len(names):
            raise ValueError(f"{len(coef)} coefficients for {len(names)} features")
        weights = dict(zip(names, coef, strict=True)) if coef else {}
        return FusionModel(
            smoothing=float(data["smoothing"]),
            open_options=int(data["open_options"]),
            semantic_threshold=float(data["semantic_threshold"]),
            # A feature the file was not fitted on weighs nothing: the same confidences.
            coef=tuple(weights.get(f, 0.0) for f in FEATURES) if weights else (),
            intercept=float(data["intercept"]),
            info=dict(data.get("info", {})),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise FusionError(f"{path}: invalid field ({exc}). {fix}") from exc
