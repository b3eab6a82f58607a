"""Choosing the judges: the subset whose out-of-fold AUROC per unit of judge cost is best."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from emafusion.stores.combiner import MAX_JUDGES_FOR_SEARCH, CombinerError
from emafusion.stores.metrics import auroc
from emafusion.train.combiner import JudgeSignals, cross_validated


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
