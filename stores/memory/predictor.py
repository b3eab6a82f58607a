"""Shrunk kNN success estimates from an `Estimator` (see the package docstring for the math).

For a query, each model's estimate is

    p = (sum_i w_i * s_i + m * prior) / (sum_i w_i + m)

over the k nearest stored queries i that hold an outcome of the model. ``w_i`` is the
similarity kernel (times the time decay, when on), and for a judged outcome also times
``MemorySettings.judged_weight``. Memories without judged outcomes take exactly the code
path, and so the floating-point results, they took before judged outcomes were kept apart.

Rows that hold only judged outcomes never take one of the k slots: the k neighbours are
the nearest rows with ground truth, and judged-only rows among the k nearest of all rows
add their evidence on top, at the judged weight. Judged evidence is so strictly additive:
at a weight near 0 the estimate is the ground-truth one, not one that lost neighbours to
rows that count for almost nothing.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import faiss
import numpy as np

from .estimator import JUDGED, TRUTH, Estimator
from .records import OutcomeMemoryError
from .results import PRIOR_SOURCES, BatchPrediction, Evidence, ModelStats, Prediction, safe_mean
from .tables import COST, LATENCY, SCORE

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

PREDICT_CHUNK = 2048  # queries per vectorized block: bounds the (B, k, models) temporaries


def check_models(models: Sequence[str]) -> list[str]:
    if isinstance(models, str):
        raise OutcomeMemoryError("models must be a list of model names, not one str")
    out = list(models)
    for model in out:
        if not isinstance(model, str) or not model:
            raise OutcomeMemoryError(f"model names must be non-empty str, got {model!r}")
    return out


def predict_arrays(
    est: Estimator,
    vectors: ArrayLike,
    models: Sequence[str] | None,
    k: int | None,
    categories: Sequence[str | None] | None,
    *,
    now: float | None,
    exclude_ids: Sequence[str | None] | None,
) -> BatchPrediction:
    queries = est.prepare_vectors(vectors, what="vectors")
    n_queries = len(queries)
    k = est.settings.k if k is None else k
    if not isinstance(k, int) or k < 1:
        raise OutcomeMemoryError(f"k must be an int >= 1, got {k!r}")
    if models is None:
        with est.lock:
            names = tuple(est.models)
    else:
        names = tuple(check_models(models))
    cats: list[str | None] = [None] * n_queries if categories is None else list(categories)
    excluded: list[str | None] = [None] * n_queries if exclude_ids is None else list(exclude_ids)
    if len(cats) != n_queries or len(excluded) != n_queries:
        raise OutcomeMemoryError(
            f"got {n_queries} vectors but {len(cats)} categories and {len(excluded)} "
            "exclude_ids; pass one per vector (or None)"
        )
    stamp = time.time() if now is None else float(now)
    parts = [
        _predict_block(
            est,
            queries[s : s + PREDICT_CHUNK],
            names,
            k,
            cats[s : s + PREDICT_CHUNK],
            excluded[s : s + PREDICT_CHUNK],
            stamp,
        )
        for s in range(0, max(n_queries, 1), PREDICT_CHUNK)
    ]
    if len(parts) == 1:
        return parts[0]
    return BatchPrediction(
        models=names,
        **{
            f.name: np.concatenate([getattr(p, f.name) for p in parts])
            for f in dataclasses.fields(BatchPrediction)
            if f.name != "models"
        },
    )


def _predict_block(
    est: Estimator,
    queries: np.ndarray,
    models: tuple[str, ...],
    k: int,
    categories: list[str | None],
    exclude_ids: list[str | None],
    now: float,
) -> BatchPrediction:
    settings = est.settings
    with est.lock:
        rows, sims = _search(
            est, queries, k, exclude_ids, _uncounted_rows(est), est.settings.judged_weight > 0
        )
        cols = np.array([est.col_of.get(m, -1) for m in models], dtype=np.intp)
        scores, costs, stamps, judged = _gather(est, rows, cols)
        prior, prior_source, mean_cost = _priors(est, models, cols, categories)

    weights = _kernel(est, sims)[:, :, None] * np.ones((1, 1, len(models)))
    if settings.half_life_s is not None:
        age = np.maximum(now - stamps, 0.0)
        weights = weights * np.exp2(-age / settings.half_life_s)
    present = ~np.isnan(scores)
    weights = np.where(present, weights, 0.0)
    measured = weights  # costs are measured, not judged: they count in full
    if judged.any():
        truth_weights = np.where(judged, 0.0, weights)
        judged_weights = np.where(judged, weights, 0.0)
        weights = truth_weights + settings.judged_weight * judged_weights
        n_truth, n_judged = truth_weights.sum(axis=1), judged_weights.sum(axis=1)
        truth_count = (truth_weights > 0).sum(axis=1)
        judged_count = (judged_weights > 0).sum(axis=1)
    n_eff = weights.sum(axis=1)
    if not judged.any():  # ground truth only: every weight is a ground-truth one
        n_truth, n_judged = n_eff, np.zeros_like(n_eff)
        truth_count = (weights > 0).sum(axis=1)
        judged_count = np.zeros_like(truth_count)
    weighted = (weights * np.where(present, scores, 0.0)).sum(axis=1)

    m = settings.shrinkage
    denominator = n_eff + m
    safe = np.where(denominator > 0, denominator, 1.0)
    p = np.where(denominator > 0, (weighted + m * prior) / safe, prior)
    p = np.clip(p, 0.0, 1.0)
    bonus = settings.exploration / np.sqrt(1.0 + n_eff)

    has_cost = ~np.isnan(costs)
    cost_weights = np.where(has_cost, measured, 0.0)
    cost_den = cost_weights.sum(axis=1)
    cost_num = (cost_weights * np.where(has_cost, costs, 0.0)).sum(axis=1)
    fallback = np.broadcast_to(mean_cost, cost_den.shape)
    expected_cost = np.where(
        cost_den > 0, cost_num / np.where(cost_den > 0, cost_den, 1.0), fallback
    )
    return BatchPrediction(
        models=models,
        p_success=p,
        exploration_bonus=bonus,
        ucb=np.minimum(1.0, p + bonus),
        prior=prior,
        prior_source=prior_source,
        expected_cost_usd=expected_cost,
        n_eff=n_eff,
        rows=rows,
        similarities=sims,
        weights=weights,
        scores=scores,
        judged=judged,
        truth_count=truth_count,
        judged_count=judged_count,
        n_truth=n_truth,
        n_judged=n_judged,
    )


def _uncounted_rows(est: Estimator) -> np.ndarray | None:
    """Rows holding only judged outcomes, which must not take neighbour slots from rows
    with ground truth (see the module docstring). None: there are none."""
    if not est.judged_active or est.truth.score.size == 0:
        return None
    uncounted = est.row_truth[: est.n] == 0
    return uncounted if uncounted.any() else None


def _search(
    est: Estimator,
    queries: np.ndarray,
    k: int,
    exclude_ids: list[str | None],
    uncounted: np.ndarray | None = None,
    add_uncounted: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(queries, k) nearest rows with ground truth and their similarities (-1 / 0 where
    fewer exist); with ``add_uncounted``, k more columns holding the judged-only rows that
    rank among the k nearest of all rows."""
    n_queries = len(queries)
    excluded_rows = np.array(
        [est.row_of.get(q, -1) if q is not None else -1 for q in exclude_ids],
        dtype=np.int64,
    )
    extra = 1 if (excluded_rows >= 0).any() else 0
    width = 2 * k if uncounted is not None and add_uncounted else k
    if min(k + extra, est.n) == 0:
        return np.full((n_queries, width), -1, dtype=np.int64), np.zeros((n_queries, width))
    sims, rows = _nearest(est, queries, k, extra, uncounted)
    if extra:
        # Drop the excluded row (order otherwise kept).
        rows, sims = _sort_last(rows, sims, rows == excluded_rows[:, None])
    if uncounted is not None:
        skip = (rows >= 0) & uncounted[np.where(rows >= 0, rows, 0)]
        judged_rows = np.where(skip, rows, -1)[:, :k]
        judged_sims = np.where(skip, sims, 0.0)[:, :k]
        rows, sims = _sort_last(rows, sims, skip)
        if add_uncounted:
            rows = np.concatenate([_fit(rows, k, -1), judged_rows], axis=1)
            sims = np.concatenate([_fit(sims, k, 0.0), judged_sims], axis=1)
    rows, sims = _fit(rows, width, -1), _fit(sims, width, 0.0).astype(np.float64)
    sims[rows < 0] = 0.0
    return rows, sims


def _nearest(
    est: Estimator, queries: np.ndarray, k: int, extra: int, uncounted: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """FAISS's nearest rows, enough of them that each query has k counted ones (rows not
    `uncounted`) besides its `extra` excluded row, or every row. Judged-only rows can be
    most of a memory that records live traffic: the search widens only as far as needed,
    by a factor of 4 a time, instead of fetching them all."""
    wanted = min(k + extra, est.n)
    while True:
        if isinstance(est.index, faiss.IndexHNSW):
            est.index.hnsw.efSearch = max(est.settings.hnsw_ef_search, wanted)
        sims, rows = est.index.search(queries, wanted)
        rows = rows.astype(np.int64)
        if uncounted is None or wanted >= est.n:
            return sims, rows
        counted = (rows >= 0) & ~uncounted[np.where(rows >= 0, rows, 0)]
        if counted.sum(axis=1).min() >= k + extra:
            return sims, rows
        wanted = min(4 * wanted, est.n)


def _sort_last(
    rows: np.ndarray, sims: np.ndarray, drop: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rows flagged in ``drop`` moved last and blanked (-1); the others keep their order."""
    order = np.argsort(drop, axis=1, kind="stable")
    rows = np.take_along_axis(rows, order, axis=1)
    sims = np.take_along_axis(sims, order, axis=1)
    rows[np.take_along_axis(drop, order, axis=1)] = -1
    return rows, sims


def _fit(values: np.ndarray, width: int, fill: float) -> np.ndarray:
    """The first ``width`` columns, padded with ``fill`` when there are fewer."""
    values = values[:, :width]
    if values.shape[1] < width:
        values = np.pad(values, ((0, 0), (0, width - values.shape[1])), constant_values=fill)
    return values


def _gather(
    est: Estimator, rows: np.ndarray, cols: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(queries, k, models) effective score, cost, timestamp (NaN where absent) and whether
    each came from the judged table."""
    valid = (rows >= 0)[:, :, None] & (cols >= 0)[None, None, :]
    r = np.where(rows >= 0, rows, 0)[:, :, None]
    c = np.where(cols >= 0, cols, 0)[None, None, :]
    judged = np.zeros(valid.shape, dtype=bool)
    if est.truth.score.size == 0:
        empty = np.full(valid.shape, np.nan)
        return empty, empty.copy(), empty.copy(), judged
    truth = est.truth
    score, cost, stamp = (
        np.where(valid, values[r, c], np.nan) for values in (truth.score, truth.cost, truth.time)
    )
    if est.judged_active:
        table = est.judged
        j_score = np.where(valid, table.score[r, c], np.nan)
        judged = np.isnan(score) & ~np.isnan(j_score)
        score = np.where(judged, j_score, score)
        cost = np.where(judged, table.cost[r, c], cost)
        stamp = np.where(judged, table.time[r, c], stamp)
    return score, cost, stamp, judged


def _priors(
    est: Estimator, models: tuple[str, ...], cols: np.ndarray, categories: list[str | None]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Prior mean per (query, model), where it came from, and each model's mean cost."""
    settings = est.settings
    declared = np.array([settings.model_priors.get(m, np.nan) for m in models], dtype=np.float64)
    known = cols >= 0
    safe_cols = np.where(known, cols, 0)

    def per_model(values: np.ndarray) -> np.ndarray:
        """Select the requested models' columns (zero for models never seen)."""
        if values.shape[-1] == 0:
            return np.zeros((*values.shape[:-1], len(models)))
        return np.where(known, values[..., safe_cols], 0)

    score_count: np.ndarray = est.total_count[TRUTH, SCORE]
    score_sum: np.ndarray = est.total_sum[TRUTH, SCORE]
    cost_count: np.ndarray = est.total_count[TRUTH, COST]
    cost_sum: np.ndarray = est.total_sum[TRUTH, COST]
    if est.judged_active:
        weight = settings.judged_weight
        if weight > 0:
            score_count = score_count + weight * est.total_count[JUDGED, SCORE]
            score_sum = score_sum + weight * est.total_sum[JUDGED, SCORE]
        cost_count = cost_count + est.total_count[JUDGED, COST]
        cost_sum = cost_sum + est.total_sum[JUDGED, COST]

    count = per_model(score_count[0])
    mean_cost = safe_mean(per_model(cost_sum[0]), per_model(cost_count[0]))

    base = np.where(~np.isnan(declared), declared, settings.default_prior)
    base_source = np.where(
        ~np.isnan(declared), PRIOR_SOURCES.index("declared"), PRIOR_SOURCES.index("default")
    )
    # A handful of outcomes is weak evidence of a model's mean: shrunk toward its base prior
    # by the same pseudo-count as the neighbour estimate (one lucky answer is not p = 1).
    m = settings.shrinkage
    den = count + m
    shrunk = np.divide(per_model(score_sum[0]) + m * base, den, out=base.copy(), where=den > 0)
    base = np.where(count > 0, shrunk, base)
    base_source = np.where(count > 0, PRIOR_SOURCES.index("global"), base_source)

    groups = np.array(
        [est.cat_of.get(c, -1) + 1 if c is not None else 0 for c in categories],
        dtype=np.intp,
    )
    prior = np.tile(base, (len(categories), 1))
    source = np.tile(base_source, (len(categories), 1)).astype(np.int8)
    if (groups > 0).any():
        cat_count = per_model(score_count[groups])
        cat_sum = per_model(score_sum[groups])
        use = (groups > 0)[:, None] & (cat_count >= settings.min_category_count)
        prior = np.where(use, safe_mean(cat_sum, cat_count), prior)
        source = np.where(use, PRIOR_SOURCES.index("category"), source).astype(np.int8)
    return prior, source, mean_cost


def _kernel(est: Estimator, sims: np.ndarray) -> np.ndarray:
    settings = est.settings
    clipped = np.clip(sims, -1.0, 1.0)
    if settings.weighting == "power":
        weights = np.maximum(clipped, 0.0) ** settings.alpha
    else:
        weights = np.exp((clipped - 1.0) / settings.temperature)
    return np.where(sims >= settings.min_similarity, weights, 0.0)


def predictions_for(batch: BatchPrediction, b: int, ids: list[str]) -> dict[str, Prediction]:
    """The per-model `Prediction` objects of query b of a batch."""
    # Plain Python lists: per-element numpy indexing costs more than the arithmetic here.
    rows = batch.rows[b].tolist()
    sims = batch.similarities[b].tolist()
    weights, scores = batch.weights[b].T.tolist(), batch.scores[b].T.tolist()
    judged = batch.judged[b].T.tolist()
    p, bonus, ucb = (a[b].tolist() for a in (batch.p_success, batch.exploration_bonus, batch.ucb))
    prior, source, cost = (
        a[b].tolist() for a in (batch.prior, batch.prior_source, batch.expected_cost_usd)
    )
    n_eff, n_truth, n_judged = (a[b].tolist() for a in (batch.n_eff, batch.n_truth, batch.n_judged))
    truth_count, judged_count = batch.truth_count[b].tolist(), batch.judged_count[b].tolist()
    out = {}
    for j, model in enumerate(batch.models):
        w = weights[j]
        used = [i for i, weight in enumerate(w) if weight > 0]
        evidence = Evidence(
            query_ids=tuple(ids[rows[i]] for i in used),
            similarities=tuple(sims[i] for i in used),
            weights=tuple(w[i] for i in used),
            scores=tuple(scores[j][i] for i in used),
            n_eff=n_eff[j],
            judged=tuple(judged[j][i] for i in used),
        )
        out[model] = Prediction(
            model=model,
            p_success=p[j],
            exploration_bonus=bonus[j],
            ucb=ucb[j],
            prior=prior[j],
            prior_source=PRIOR_SOURCES[source[j]],
            expected_cost_usd=None if math.isnan(cost[j]) else cost[j],
            evidence=evidence,
            truth_count=truth_count[j],
            judged_count=judged_count[j],
            n_truth=n_truth[j],
            n_judged=n_judged[j],
        )
    return out


def model_stats(est: Estimator, category: str | None) -> dict[str, ModelStats]:
    """Per-model counts and means from the running totals (see `ModelStats`)."""
    with est.lock:
        models = list(est.models)
        group = 0
        if category is not None:
            code = est.cat_of.get(category)
            if code is None:
                return {}
            group = code + 1
        counts = est.total_count[:, :, group, : len(models)].astype(np.float64)
        sums = est.total_sum[:, :, group, : len(models)].copy()
    truth_count, judged_count = counts[TRUTH], counts[JUDGED]
    weight = est.settings.judged_weight
    score_count = truth_count[SCORE] + weight * judged_count[SCORE]
    mean_score = safe_mean(sums[TRUTH, SCORE] + weight * sums[JUDGED, SCORE], score_count)
    measured = counts.sum(axis=0)  # costs and latencies are measured, never judged
    means = safe_mean(sums.sum(axis=0), measured)
    out = {}
    for col, model in enumerate(models):
        if score_count[col] <= 0:
            continue
        out[model] = ModelStats(
            model=model,
            count=int(truth_count[SCORE, col]),
            mean_score=float(mean_score[col]),
            cost_count=int(measured[COST, col]),
            mean_cost_usd=None if measured[COST, col] == 0 else float(means[COST, col]),
            mean_latency_s=None if measured[LATENCY, col] == 0 else float(means[LATENCY, col]),
            judged_count=int(judged_count[SCORE, col]),
            judged_weight=weight,
        )
    return out
