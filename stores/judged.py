"""How much a judged outcome counts as evidence, measured on held-out ground truth.

`record` stores what a run believes of each answer it gathered (`policy.answer_beliefs`)
as a judged outcome. Such a belief is evidence only as far as it knows more than the
memory already did: a judge that repeats the memory's own prediction (the `memory_prior`
judge) would, recorded, only confirm the memory and slow it down when the world changes.

So the weight is measured, on a split the memory was not built from, as the share of a
ground-truth label's Brier improvement over the memory's prediction that the belief
achieves, both calibrated alike (a Platt map fitted out of fold):

    weight = clip(1 - Brier(belief, truth) / Brier(memory prediction, truth), 0, 1)

A label scores 1 (its Brier is 0), a belief no better than the memory 0. Beliefs are
recorded through a Platt map fitted on the same split (their bias removed), and only for
runs whose judging configuration (`JudgingKey`) is the one measured: the weight of another
configuration is unknown, so its beliefs are not recorded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# What shapes a run's beliefs: its judges, how they combine, and which answers it gathers.
JUDGING_FIELDS = ("judges", "judge_weights", "combiner", "fusion", "llm_judge", "stages")


def judging_key(settings: Any) -> dict[str, Any]:
    """The run settings that shape its beliefs (a `Context`, or its JSON dump)."""
    get = settings.get if isinstance(settings, dict) else lambda k: getattr(settings, k)
    judges = get("judges") or ()
    weights = get("judge_weights") or {}
    return {
        "judges": sorted(judges),
        "judge_weights": {str(k): float(v) for k, v in sorted(dict(weights).items())},
        "combiner": get("combiner"),
        "fusion": get("fusion"),
        "llm_judge": get("llm_judge"),
        "stages": get("stages"),
    }


@dataclass(frozen=True)
class JudgedEvidence:
    """The measured weight of judged outcomes, and the map that calibrates them."""

    judging: dict[str, Any]  # `judging_key` of the configuration measured
    weight: float  # in [0, 1]: what one judged outcome counts next to a label
    slope: float  # calibrated = sigmoid(slope * logit(belief) + intercept)
    intercept: float
    brier_belief: float  # the calibrated beliefs (out of fold)
    brier_memory: float  # the memory's predictions of the same answers, calibrated alike
    answers: int
    split: str
    # Per source ("truth": label, "judged": calibrated belief), per model: (mean, sd) of its
    # residuals against the memory's prediction in these runs (the drift test's baseline).
    baseline: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)

    def matches(self, settings: Any) -> bool:
        return judging_key(settings) == self.judging

    def calibrated(self, belief: float) -> float:
        return sigmoid(self.slope * logit(belief) + self.intercept)

    def to_json(self) -> dict[str, Any]:
        return {
            "judging": self.judging,
            "weight": self.weight,
            "slope": self.slope,
            "intercept": self.intercept,
            "brier_belief": self.brier_belief,
            "brier_memory": self.brier_memory,
            "answers": self.answers,
            "split": self.split,
            "baseline": {
                source: {m: list(v) for m, v in models.items()}
                for source, models in self.baseline.items()
            },
            "method": "1 - Brier(belief) / Brier(memory), both Platt-calibrated out of fold, "
            "clipped to [0, 1]",
        }

    @classmethod
    def from_json(cls, data: object) -> JudgedEvidence | None:
        """The measurement in a manifest, or None where there is none (judged outcomes then
        count for nothing). A damaged one is an error, never a silent weight."""
        if data is None:
            return None
        numbers = ("weight", "slope", "intercept", "brier_belief", "brier_memory", "answers")
        ok = (
            isinstance(data, dict)
            and isinstance(data.get("judging"), dict)
            and set(data["judging"]) == set(JUDGING_FIELDS)
            and isinstance(data.get("split"), str)
            and all(
                isinstance(data.get(k), int | float)
                and not isinstance(data.get(k), bool)
                and math.isfinite(data[k])
                for k in numbers
            )
            and 0.0 <= data["weight"] <= 1.0
        )
        if not ok:
            raise ValueError(
                f"ROUTER.json: 'judged' must hold 'judging' ({', '.join(JUDGING_FIELDS)}), "
                f"'split' and the numbers {', '.join(numbers)} (weight in [0, 1]), got "
                f"{data!r}. Fix: measure it again (`emafusion judges evidence --router-dir "
                f"DIR`) or remove the entry (judged outcomes then count for nothing)."
            )
        assert isinstance(data, dict)
        baseline = data.get("baseline", {})
        if not isinstance(baseline, dict) or any(
            not isinstance(models, dict)
            or any(
                not isinstance(v, list)
                or len(v) != 2
                or any(isinstance(x, bool) or not isinstance(x, int | float) for x in v)
                for v in models.values()
            )
            for models in baseline.values()
        ):
            raise ValueError(
                f"ROUTER.json: 'judged'.'baseline' must map 'truth' and 'judged' to each "
                f"model's [mean, sd] of residuals, got {baseline!r}. Fix: measure it again "
                f"(`emafusion judges evidence --router-dir DIR`)."
            )
        return cls(
            judging=dict(data["judging"]),
            weight=float(data["weight"]),
            slope=float(data["slope"]),
            intercept=float(data["intercept"]),
            brier_belief=float(data["brier_belief"]),
            brier_memory=float(data["brier_memory"]),
            answers=int(data["answers"]),
            split=str(data["split"]),
            baseline={
                str(source): {str(m): (float(v[0]), float(v[1])) for m, v in models.items()}
                for source, models in baseline.items()
            },
        )


def logit(p: float) -> float:
    p = min(1.0 - 1e-6, max(1e-6, p))
    return math.log(p / (1.0 - p))


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)
