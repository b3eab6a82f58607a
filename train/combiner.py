"""Fitting the learned combiner: judge signals of answers whose correctness is known ->
one `LearnedCombiner` per judge subset (`CombinerBook`), and out-of-fold confidences.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from emafusion.stores.combiner import (
    MAX_JUDGES_FOR_SEARCH,
    CombinerBook,
    CombinerError,
    LearnedCombiner,
    design_matrix,
    sigmoid,
)


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
        p = sigmoid(design @ beta)
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
    design = design_matrix(signals.scores)
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
