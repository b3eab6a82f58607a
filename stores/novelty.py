"""Novelty: is a query unlike everything the router learned from?

The signal is the similarity of the query to its nearest stored query that holds counted
evidence (the memory's top neighbour). Its threshold is fitted, not set by hand, by
holding out whole categories of the training queries: each category's queries are scored
against the training queries of the other categories (as if the category had never been
seen), and every query is scored against all the others but itself (as traffic of a known
kind is). The threshold that best separates the two (Youden's J) is kept, with the
separation it achieved (AUROC), in the router's manifest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import faiss
import numpy as np

MIN_PER_CATEGORY = 10  # a category with fewer queries is not held out on its own
MAX_SCORED = 400  # queries scored per category (seeded sample): bounds the fit's time


@dataclass(frozen=True)
class NoveltyRule:
    """Novel: the top neighbour's similarity is below `min_similarity`."""

    min_similarity: float
    auroc: float  # how well the similarity separated held-out categories from known ones
    true_positive_rate: float  # held-out queries flagged at the threshold
    false_positive_rate: float  # known-kind queries flagged at the threshold
    held_out_categories: int
    scored_queries: int

    def is_novel(self, top_similarity: float) -> bool:
        return top_similarity < self.min_similarity

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "method": "leave-one-category-out on train, Youden's J"}

    @classmethod
    def from_json(cls, data: object) -> NoveltyRule | None:
        """The rule in a manifest, or None where there is none (older routers). A damaged
        one is an error: routing by a half-read rule would be silently wrong."""
        if data is None:
            return None
        fields = cls.__dataclass_fields__
        if not isinstance(data, dict) or any(
            not isinstance(data.get(k), int | float) or isinstance(data.get(k), bool)
            for k in fields
        ):
            raise ValueError(
                f"ROUTER.json: 'novelty' must hold the numbers {', '.join(fields)}, got "
                f"{data!r}. Fix: rebuild the router into an empty directory "
                f"(`emafusion memory build --out DIR`)."
            )
        return cls(
            min_similarity=float(data["min_similarity"]),
            auroc=float(data["auroc"]),
            true_positive_rate=float(data["true_positive_rate"]),
            false_positive_rate=float(data["false_positive_rate"]),
            held_out_categories=int(data["held_out_categories"]),
            scored_queries=int(data["scored_queries"]),
        )


def _top_similarity(index_vectors: np.ndarray, queries: np.ndarray, skip_self: bool) -> np.ndarray:
    index = faiss.IndexFlatIP(index_vectors.shape[1])
    index.add(np.ascontiguousarray(index_vectors, dtype=np.float32))
    sims, _ = index.search(np.ascontiguousarray(queries, dtype=np.float32), 2 if skip_self else 1)
    return sims[:, 1] if skip_self else sims[:, 0]


def fit_novelty(
    vectors: np.ndarray, categories: Sequence[str], seed: int = 0
) -> NoveltyRule | None:
    """The threshold from held-out categories, or None with fewer than two categories of
    `MIN_PER_CATEGORY` queries (nothing to hold out against)."""
    labels = np.asarray(list(categories))
    names = [c for c in sorted(set(labels.tolist())) if (labels == c).sum() >= MIN_PER_CATEGORY]
    if len(names) < 2 or len(vectors) != len(labels):
        return None
    rng = np.random.default_rng(seed)
    known_scores, novel_scores = [], []
    for name in names:
        rows = np.flatnonzero(labels == name)
        sample = rng.choice(rows, size=min(len(rows), MAX_SCORED), replace=False)
        others = vectors[labels != name]
        novel_scores.append(_top_similarity(others, vectors[sample], skip_self=False))
        # The same queries as known traffic: against every stored query but themselves.
        sims = _top_similarity(vectors, vectors[sample], skip_self=True)
        known_scores.append(sims)
    known, novel = np.concatenate(known_scores), np.concatenate(novel_scores)
    return _best_threshold(known, novel, len(names))


def _best_threshold(known: np.ndarray, novel: np.ndarray, held_out: int) -> NoveltyRule:
    scores = np.concatenate([known, novel])
    is_novel = np.concatenate([np.zeros(len(known), bool), np.ones(len(novel), bool)])
    order = np.argsort(scores, kind="stable")
    scores, is_novel = scores[order], is_novel[order]
    # Flag everything below a cut: TPR/FPR after each position.
    tpr = np.cumsum(is_novel) / max(1, is_novel.sum())
    fpr = np.cumsum(~is_novel) / max(1, (~is_novel).sum())
    best = int(np.argmax(tpr - fpr))
    # The cut halfway to the next score, so the flagged queries are exactly those up to best.
    upper = scores[best + 1] if best + 1 < len(scores) else scores[best] + 1e-6
    threshold = float((scores[best] + upper) / 2.0)
    ranks = np.argsort(np.argsort(np.concatenate([known, novel]), kind="stable"), kind="stable")
    # AUROC of "lower similarity means novel" via the rank-sum statistic.
    n_known, n_novel = len(known), len(novel)
    rank_sum_known = float(ranks[:n_known].sum() + n_known)
    auroc = (rank_sum_known - n_known * (n_known + 1) / 2.0) / max(1, n_known * n_novel)
    return NoveltyRule(
        min_similarity=threshold,
        auroc=float(auroc),
        true_positive_rate=float(tpr[best]),
        false_positive_rate=float(fpr[best]),
        held_out_categories=held_out,
        scored_queries=int(len(scores)),
    )
