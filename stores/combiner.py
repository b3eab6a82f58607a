"""Combining judges into one confidence; thresholds by goal; choosing the judges.

- `static_confidence`: the paper's weighted mean of the judges that spoke.
- `LearnedCombiner`: logistic regression on each judge's log-odds (and whether it
  abstained), fitted on validation outcomes, so that "0.8" means right about 80% of the
  time. `CombinerBook` keeps one per judge subset (dropping a judge refits, it does not
  zero a weight) and is saved beside the memory as ``combiner.json``.
- `CascadeTraces` + `simulate`: the cascade's decisions replayed from judge signals of
  every level (a graph run that never stops early), exactly as `decide` and `finalize`
  make them, so a threshold can be chosen for a goal (`select_threshold`) without
  rerunning the graph per candidate threshold.
- `select_judges`: the judge subset whose validation AUROC per unit of judge cost is best.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from emafusion.stores.metrics import auroc
from emafusion.stores.verifier import write_json_atomic

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


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def subset_key(judges: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(judges)))


# --- signals ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class JudgeSignals:
    """Judge scores of answers whose correctness is known.

    ``scores`` (answers, judges) is NaN where a judge abstained; ``costs`` the USD each judge
    spent on each answer; ``groups`` the query of each answer (folds keep a query together).
    """

    judges: tuple[str, ...]
    scores: np.ndarray
    costs: np.ndarray
    labels: np.ndarray
    groups: np.ndarray | None = None

    def __post_init__(self) -> None:
        n, j = len(self.labels), len(self.judges)
        if self.scores.shape != (n, j) or self.costs.shape != (n, j):
            raise CombinerError(
                f"scores {self.scores.shape} and costs {self.costs.shape} must be "
                f"(answers, judges) = ({n}, {j})"
            )
        known = self.scores[~np.isnan(self.scores)]
        if known.size and (known.min() < 0.0 or known.max() > 1.0):
            raise CombinerError("judge scores must be in [0, 1] (NaN for an abstention)")
        if self.groups is not None and len(self.groups) != n:
            raise CombinerError(f"groups has {len(self.groups)} entries for {n} answers")

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, judges: Sequence[str]) -> JudgeSignals:
        missing = [j for j in judges if j not in self.judges]
        if missing:
            raise CombinerError(f"no signals of judges {missing}; have {list(self.judges)}")
        cols = [self.judges.index(j) for j in judges]
        return JudgeSignals(
            tuple(judges), self.scores[:, cols], self.costs[:, cols], self.labels, self.groups
        )

    def cost_per_1k(self) -> dict[str, float]:
        """USD per 1,000 judged answers, per judge."""
        means = self.costs.mean(axis=0) if len(self) else np.zeros(len(self.judges))
        return {j: float(c) * 1000.0 for j, c in zip(self.judges, means, strict=True)}


def static_confidence(
    scores: np.ndarray, judges: Sequence[str], weights: Mapping[str, float]
) -> np.ndarray:
    """`nodes.escalate.combine` over many answers: NaN where no judge spoke."""
    w = np.array([weights.get(j, 1.0) for j in judges], dtype=np.float64)
    w = np.where(w > 0, w, 0.0)
    spoke = ~np.isnan(scores) & (w > 0)
    total = np.where(spoke, np.nan_to_num(scores) * w, 0.0).sum(axis=1)
    weight = np.where(spoke, w, 0.0).sum(axis=1)
    out = np.full(len(scores), np.nan)
    np.divide(total, weight, out=out, where=weight > 0)
    return out


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
        return _sigmoid(
            _design(scores) @ np.concatenate([self.weights, self.abstain]) + self.intercept
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


def _design(scores: np.ndarray) -> np.ndarray:
    abstained = np.isnan(scores)
    return np.hstack([np.where(abstained, 0.0, _logit(np.nan_to_num(scores))), abstained])


def fit_logistic(
    x: np.ndarray, y: np.ndarray, l2: float = 1.0, max_iter: int = 100
) -> tuple[np.ndarray, float]:
    """L2-penalized logistic regression (intercept unpenalized) by Newton's method."""
    n, d = x.shape
    design = np.hstack([x, np.ones((n, 1))])
    beta = np.zeros(d + 1)
    penalty = np.full(d + 1, l2)
    penalty[-1] = 0.0
    target = y.astype(np.float64)
    for _ in range(max_iter):
        p = _sigmoid(design @ beta)
        gradient = design.T @ (p - target) + penalty * beta
        hessian = (design * (p * (1 - p))[:, None]).T @ design + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hessian, gradient)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    return beta[:-1], float(beta[-1])


def fit_combiner(signals: JudgeSignals, l2: float = 1.0) -> LearnedCombiner:
    if len(signals) < 20 or signals.labels.all() or not signals.labels.any():
        raise CombinerError(
            f"need at least 20 judged answers, some right and some wrong, to fit a combiner; "
            f"got {len(signals)} ({int(signals.labels.sum())} right). Fix: fit on a larger "
            f"validation split."
        )
    design = _design(signals.scores)
    j = len(signals.judges)
    # Every judge says "higher = more likely right"; a negative weight only fits noise or
    # the overlap of two judges (the verifier already contains the memory prior). So a
    # judge whose weight comes out negative is left out and the rest refitted, until none
    # is (an active set; abstention offsets stay free).
    active = np.ones(2 * j, dtype=bool)
    while True:
        coef = np.zeros(2 * j)
        coef[active], intercept = fit_logistic(design[:, active], signals.labels, l2)
        negative = np.flatnonzero(coef[:j] < 0)
        if not len(negative):
            break
        active[negative] = False
    zeroed = [signals.judges[i] for i in range(j) if not active[i]]
    info = {"answers": len(signals), "zero_weight": zeroed}
    return LearnedCombiner(signals.judges, coef[:j], coef[j:], intercept, info)


def cross_validated(signals: JudgeSignals, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Out-of-fold combined confidence (folds keep each query's answers together)."""
    groups = signals.groups if signals.groups is not None else np.arange(len(signals))
    unique = np.unique(groups)
    fold_of = dict(
        zip(
            unique.tolist(),
            np.random.default_rng(seed).permutation(len(unique)) % folds,
            strict=True,
        )
    )
    fold = np.array([fold_of[g] for g in groups.tolist()])
    out = np.empty(len(signals))
    for f in range(folds):
        held = fold == f
        if not held.any():
            continue
        train = JudgeSignals(
            signals.judges,
            signals.scores[~held],
            signals.costs[~held],
            signals.labels[~held],
        )
        out[held] = fit_combiner(train).predict(signals.scores[held])
    return out


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


def fit_book(signals: JudgeSignals, l2: float = 1.0) -> CombinerBook:
    """A combiner for every non-empty subset of the signals' judges."""
    if len(signals.judges) > MAX_JUDGES_FOR_SEARCH:
        raise CombinerError(
            f"{len(signals.judges)} judges: at most {MAX_JUDGES_FOR_SEARCH} are searched "
            f"exhaustively. Fix: pass fewer judges."
        )
    combiners = {}
    for size in range(1, len(signals.judges) + 1):
        for subset in itertools.combinations(sorted(signals.judges), size):
            combiners[subset] = fit_combiner(signals.select(subset), l2)
    return CombinerBook(combiners)


# --- cascade replay ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CascadeTraces:
    """Every level a cascade could call, per query, with its judges' scores and costs.

    Recorded from a graph run that never returns early (threshold above 1): at any lower
    threshold the graph calls a prefix of these same levels. Arrays are (queries, levels)
    or (queries, levels, judges); ``answered`` marks the levels that exist.
    """

    judges: tuple[str, ...]
    scores: np.ndarray
    judge_costs: np.ndarray
    model_costs: np.ndarray
    correct: np.ndarray
    answered: np.ndarray
    query_ids: tuple[str, ...] = ()
    # Scores as they stand after the last level (agreement is re-scored when later answers
    # arrive); the fallback choice when no level clears uses these. None: same as scores.
    final_scores: np.ndarray | None = None

    def __post_init__(self) -> None:
        q, levels = self.answered.shape
        for name in ("model_costs", "correct"):
            if getattr(self, name).shape != (q, levels):
                raise CombinerError(f"CascadeTraces.{name} must be (queries, levels)")
        for name in ("scores", "judge_costs"):
            if getattr(self, name).shape != (q, levels, len(self.judges)):
                raise CombinerError(f"CascadeTraces.{name} must be (queries, levels, judges)")
        # Levels are a prefix: the cascade stops at the first level that is not there.
        if (self.answered[:, 1:] & ~self.answered[:, :-1]).any():
            raise CombinerError("CascadeTraces.answered must mark a prefix of levels per query")

    def __len__(self) -> int:
        return len(self.answered)

    def select(self, judges: Sequence[str]) -> CascadeTraces:
        missing = [j for j in judges if j not in self.judges]
        if missing:
            raise CombinerError(f"traces have no judges {missing}; have {list(self.judges)}")
        cols = [self.judges.index(j) for j in judges]
        return CascadeTraces(
            tuple(judges),
            self.scores[:, :, cols],
            self.judge_costs[:, :, cols],
            self.model_costs,
            self.correct,
            self.answered,
            self.query_ids,
            None if self.final_scores is None else self.final_scores[:, :, cols],
        )

    def signals(self) -> JudgeSignals:
        """Every answered level as one judged answer (grouped by query)."""
        q, _ = np.nonzero(self.answered)
        return JudgeSignals(
            self.judges,
            self.scores[self.answered],
            self.judge_costs[self.answered],
            self.correct[self.answered] >= 0.5,
            groups=q,
        )

    def confidence(self, combine: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """(queries, levels) confidence from `combine` of each answered level's scores."""
        return self._combined(self.scores, combine)

    def final_confidence(self, combine: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Confidence from the scores as they stand after the last level."""
        scores = self.scores if self.final_scores is None else self.final_scores
        return self._combined(scores, combine)

    def _combined(
        self, scores: np.ndarray, combine: Callable[[np.ndarray], np.ndarray]
    ) -> np.ndarray:
        out = np.full(self.answered.shape, np.nan)
        if self.answered.any():
            out[self.answered] = combine(scores[self.answered])
        return out


@dataclass(frozen=True)
class CascadeResult:
    threshold: float
    accuracy: float
    cost_per_1k: float
    escalation_rate: float
    mean_levels: float
    levels: np.ndarray = field(repr=False, compare=False)  # (queries,) levels called
    chosen: np.ndarray = field(repr=False, compare=False)  # (queries,) level returned; -1 none


def simulate(
    traces: CascadeTraces,
    confidence: np.ndarray,
    threshold: float,
    fallback: np.ndarray | None = None,
) -> CascadeResult:
    """The cascade at `threshold`, decided as `decide` and `finalize` decide.

    A level returns when its confidence clears the threshold (or no judge spoke); otherwise
    the next level is called. When none clears, the most confident answer wins, the later
    level on ties.
    """
    answered = traces.answered
    n_queries, n_levels = answered.shape
    clears = answered & (np.isnan(confidence) | (confidence >= threshold))
    any_clears = clears.any(axis=1)
    first = np.argmax(clears, axis=1)
    n_answered = answered.sum(axis=1)
    levels = np.where(any_clears, first + 1, n_answered)
    final = confidence if fallback is None else fallback
    filled = np.where(answered, np.nan_to_num(final, nan=0.0), -np.inf)
    latest_best = n_levels - 1 - np.argmax(filled[:, ::-1], axis=1)
    chosen = np.where(any_clears, first, latest_best)
    chosen = np.where(n_answered > 0, chosen, -1)
    rows = np.arange(n_queries)
    correct = np.where(chosen >= 0, traces.correct[rows, np.maximum(chosen, 0)], 0.0)
    level_cost = traces.model_costs + traces.judge_costs.sum(axis=2)
    called = np.arange(n_levels)[None, :] < levels[:, None]
    cost = np.where(called & answered, level_cost, 0.0).sum(axis=1)
    return CascadeResult(
        threshold=float(threshold),
        accuracy=float(correct.mean()) if n_queries else float("nan"),
        cost_per_1k=float(cost.mean()) * 1000.0 if n_queries else float("nan"),
        escalation_rate=float((levels > 1).mean()) if n_queries else float("nan"),
        mean_levels=float(levels.mean()) if n_queries else float("nan"),
        levels=levels,
        chosen=chosen,
    )


def candidate_thresholds(confidence: np.ndarray, most: int = 1000) -> np.ndarray:
    """Every distinct confidence (or `most` quantiles of them), 0, and above 1 (never stop)."""
    values = np.unique(confidence[~np.isnan(confidence)])
    if len(values) > most:
        values = np.unique(np.quantile(values, np.linspace(0.0, 1.0, most)))
    return np.unique(np.concatenate([[0.0], values, [1.01]]))


GoalKind = Literal["target_accuracy", "max_cost_per_1k", "max_escalation_rate"]


@dataclass(frozen=True)
class Goal:
    kind: GoalKind
    value: float

    def __post_init__(self) -> None:
        if self.kind not in ("target_accuracy", "max_cost_per_1k", "max_escalation_rate"):
            raise CombinerError(f"unknown goal {self.kind!r}")
        if not math.isfinite(self.value) or self.value < 0:
            raise CombinerError(f"goal {self.kind} must be a finite number >= 0, got {self.value}")
        if self.kind != "max_cost_per_1k" and self.value > 1:
            raise CombinerError(
                f"goal {self.kind} is a fraction in [0, 1], got {self.value}. Fix: pass e.g. 0.7"
            )

    def describe(self) -> str:
        if self.kind == "target_accuracy":
            return f"cheapest threshold with accuracy >= {self.value:.4f}"
        if self.kind == "max_cost_per_1k":
            return f"most accurate threshold costing <= ${self.value:.4f} per 1k queries"
        return f"most accurate threshold escalating <= {self.value:.1%} of queries"


@dataclass(frozen=True)
class ThresholdChoice:
    goal: Goal
    threshold: float
    result: CascadeResult
    met: bool


def threshold_curve(
    traces: CascadeTraces,
    confidence: np.ndarray,
    thresholds: np.ndarray | None = None,
    fallback: np.ndarray | None = None,
) -> list[CascadeResult]:
    grid = candidate_thresholds(confidence) if thresholds is None else thresholds
    return [simulate(traces, confidence, float(t), fallback) for t in grid]


def select_threshold(
    traces: CascadeTraces, confidence: np.ndarray, goal: Goal, fallback: np.ndarray | None = None
) -> ThresholdChoice:
    """The threshold meeting `goal` on these traces (fit on validation, then used as is).

    Unreachable goals fall back to the closest point (most accurate, or cheapest) and say so.
    """
    curve = threshold_curve(traces, confidence, fallback=fallback)
    acc = np.array([r.accuracy for r in curve])
    cost = np.array([r.cost_per_1k for r in curve])
    esc = np.array([r.escalation_rate for r in curve])
    # Ties resolve to the cheaper, then the lower threshold (fewer escalations).
    if goal.kind == "target_accuracy":
        feasible = acc >= goal.value - 1e-12
        pool = feasible if feasible.any() else np.isclose(acc, acc.max())
        best = int(np.lexsort((np.arange(len(curve)), cost, ~pool))[0])
    else:
        limit = cost if goal.kind == "max_cost_per_1k" else esc
        feasible = limit <= goal.value + 1e-12
        if feasible.any():
            best = int(np.lexsort((np.arange(len(curve)), cost, -acc, ~feasible))[0])
        else:
            best = int(np.lexsort((np.arange(len(curve)), -acc, limit))[0])
    chosen = curve[best]
    return ThresholdChoice(goal, chosen.threshold, chosen, bool(feasible.any()))


# --- judge selection --------------------------------------------------------------------------


@dataclass(frozen=True)
class SubsetScore:
    judges: tuple[str, ...]
    auroc: float
    cost_per_1k: float
    utility: float


@dataclass(frozen=True)
class JudgeSelection:
    selected: tuple[str, ...]
    dropped: dict[str, str]
    subsets: list[SubsetScore]
    min_auroc_per_usd: float
    min_gain: float


def select_judges(
    signals: JudgeSignals,
    min_auroc_per_usd: float = 0.01,
    min_gain: float = 0.002,
    folds: int = 5,
) -> JudgeSelection:
    """The judge subset with the best cross-validated AUROC for what its judges cost.

    utility(S) = AUROC(S) - min_auroc_per_usd * (judge USD per 1k answers of S)
                 - min_gain * |S|
    so a judge stays only if it adds at least `min_auroc_per_usd` AUROC per $1 per 1k
    answers it costs, and at least `min_gain` AUROC even when free (it still adds latency
    and something to maintain). AUROC is out-of-fold on the given (validation) signals.
    """
    if len(signals.judges) > MAX_JUDGES_FOR_SEARCH:
        raise CombinerError(f"at most {MAX_JUDGES_FOR_SEARCH} judges are searched exhaustively")
    labels = signals.labels
    judge_cost = signals.cost_per_1k()
    scored: dict[tuple[str, ...], SubsetScore] = {}
    for size in range(1, len(signals.judges) + 1):
        for subset in itertools.combinations(signals.judges, size):
            value = auroc(cross_validated(signals.select(subset), folds), labels)
            cost = sum(judge_cost[j] for j in subset)
            utility = value - min_auroc_per_usd * cost - min_gain * size
            scored[subset] = SubsetScore(subset, value, cost, utility)
    best = max(scored.values(), key=lambda s: (s.utility, -len(s.judges)))
    dropped = {}
    for judge in signals.judges:
        if judge in best.judges:
            continue
        with_it = scored[tuple(j for j in signals.judges if j in best.judges or j == judge)]
        gain = with_it.auroc - best.auroc
        cost = judge_cost[judge]
        # Keeping it pays only when the gain beats what its cost and upkeep ask for.
        need = min_gain + min_auroc_per_usd * cost
        dropped[judge] = (
            f"adds {gain:+.4f} AUROC to {'+'.join(best.judges)} at ${cost:.4f} per 1k answers; "
            f"worth it from {need:+.4f} (min gain {min_gain} + {min_auroc_per_usd} per $)"
        )
    return JudgeSelection(
        best.judges,
        dropped,
        sorted(scored.values(), key=lambda s: -s.utility),
        min_auroc_per_usd,
        min_gain,
    )
