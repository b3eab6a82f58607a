"""Fusion traces without running the graph: each query's signals (the classifier's
category probabilities, every model's recorded answer, its key, cost, reliability and the
memory's kNN P(success) of it on this query), and the `CascadeView`s the graph would record
for a fixed plan, built with the very functions the graph's nodes call (`category_options`,
`fixed_plan`, `answer_key`, `reliabilities`, `memory_success`, `policy.view_of`). The
replay-equals-graph tests hold them to it.

For train queries the signals are cross-fitted: a query's category probabilities come
from a classifier that never saw it, and its memory predictions leave it out of the memory
(`loo_memory_success`: exactly what a memory without it would predict).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from emafusion.graph.state import CascadeView
from emafusion.nodes import policy
from emafusion.nodes.classify import category_options
from emafusion.nodes.invoke_model import new_attempt
from emafusion.nodes.planning import fixed_plan
from emafusion.nodes.reliability import (
    ReliabilityTable,
    memory_success,
    reliabilities,
    table_from_counts,
)
from emafusion.nodes.resources import RouterResources
from emafusion.stores.answers import answer_key, option_count
from emafusion.stores.memory import OutcomeMemory
from emafusion.stores.providers import recorded_call_cost
from emafusion.stores.recordings import Record, routing_text
from emafusion.stores.taxonomy import CategoryClassifier

Plan = Mapping[str, Sequence[Sequence[str]]]


@dataclass(frozen=True)
class QuerySignals:
    record: Record
    probs: dict[str, float]
    top: str
    top_p: float
    n_options: int
    keys: dict[str, str | None]
    costs: dict[str, float]
    table: ReliabilityTable
    # The memory's kNN P(success) of each recorded model on this query (leave-one-out
    # for a query the memory holds).
    memory: dict[str, float]

    def score(self, model: str | None) -> float:
        outcome = self.record.outcomes.get(model) if model else None
        return outcome.score if outcome is not None else 0.0


def query_signals(
    records: Sequence[Record],
    vectors: np.ndarray,
    resources: RouterResources,
    classifiers: Sequence[CategoryClassifier] | CategoryClassifier,
    tables: Sequence[ReliabilityTable] | ReliabilityTable,
    folds: Sequence[int] | None = None,
    *,
    taxonomy_threshold: float,
    k: int,
    leave_out: bool = False,
) -> list[QuerySignals]:
    """Signals of `records` (their routing-text `vectors` in order). With `folds`, query i
    uses classifier and table number folds[i] (cross-fitting); else the one given.

    The memory predictions are asked as the graph asks them: `k` neighbours, the category
    when its probability reaches `taxonomy_threshold`. `leave_out`: records the memory holds
    are predicted leave-one-out (train queries; a test query is not in the memory)."""
    out = []
    names = resources.pool.names
    for i, record in enumerate(records):
        f = folds[i] if folds is not None else 0
        classifier = classifiers[f] if isinstance(classifiers, Sequence) else classifiers
        table = tables[f] if isinstance(tables, Sequence) else tables
        # One query at a time, as the graph's classify node computes it (same numbers).
        probs = classifier.predict_proba(vectors[i : i + 1])[0]
        categories = classifier.categories
        top = int(np.argmax(probs))
        n_options = option_count(record.query)
        keys, costs = {}, {}
        for model in names:
            outcome = record.outcomes.get(model)
            if outcome is None:
                continue
            keys[model] = answer_key(record.query, outcome.response or "", n_options)
            costs[model] = recorded_call_cost(resources.spec(model).prices, record.query, outcome)[
                1
            ]
        out.append(
            QuerySignals(
                record,
                {c: float(p) for c, p in zip(categories, probs, strict=True)},
                categories[top],
                float(probs[top]),
                n_options,
                keys,
                costs,
                table,
                {},
            )
        )
    # The category the graph's classify passes on (None: not confident), per query.
    asked = [s.top if s.top_p >= taxonomy_threshold else None for s in out]
    if leave_out:
        predicted = loo_memory_success(
            resources.memory, vectors, [r.id for r in records], names, k, asked
        )
    else:
        predicted = [
            memory_success(resources.memory, vectors[i], names, k, asked[i])
            for i in range(len(records))
        ]
    for signals, memory in zip(out, predicted, strict=True):
        signals.memory.update({m: p for m, p in memory.items() if m in signals.keys})
    return out


def loo_memory_success(
    memory: OutcomeMemory,
    vectors: np.ndarray,
    query_ids: Sequence[str],
    models: Sequence[str],
    k: int,
    categories: Sequence[str | None],
) -> list[dict[str, float]]:
    """`memory_success` of each query as a memory without it would give it: its own row is
    left out of the neighbours (the memory's `exclude_ids`) and its own outcomes out of the
    overall and category priors the estimate shrinks toward. Queries the memory does not
    hold get the plain prediction.

    p = (sum_i w_i s_i + m prior) / (n_eff + m), so leaving the query out of the prior
    moves p by m (prior' - prior) / (n_eff + m)."""
    settings = memory.settings
    if settings.judged_weight > 0:
        raise ValueError(
            "leave-one-out memory predictions need judged_weight 0 (judged outcomes would "
            "enter the priors); fit on a memory of ground-truth outcomes"
        )
    names = list(models)
    if not len(query_ids):
        return []
    batch = memory.predict_arrays(vectors, names, k, list(categories), exclude_ids=list(query_ids))
    shrinkage = settings.shrinkage
    overall = memory.model_stats(None)
    known = set(memory.categories)
    by_category = {c: memory.model_stats(c) for c in set(categories) if c in known}

    def default(model: str) -> float:
        return float(settings.model_priors.get(model, settings.default_prior))

    out = []
    for b, query_id in enumerate(query_ids):
        p = {m: float(batch.p_success[b, j]) for j, m in enumerate(names)}
        stored = memory.get(query_id)
        category = categories[b]
        for j, model in enumerate(names):
            own = stored.ground_truth.get(model) if stored is not None else None
            if stored is None or own is None:
                continue
            whole = overall.get(model)
            count = (whole.count if whole else 0) - 1
            # The memory's global prior without this query: shrunk toward the default.
            base = (
                (whole.mean_score * whole.count - own.score + shrinkage * default(model))
                / (count + shrinkage)
                if whole is not None and count > 0
                else default(model)
            )
            prior = base
            if category is not None and category in by_category:
                stats = by_category[category].get(model)
                n = stats.count if stats else 0
                total = stats.mean_score * stats.count if stats else 0.0
                if stored.category == category:
                    n, total = n - 1, total - own.score
                if n >= settings.min_category_count and n > 0:
                    prior = total / n
            n_eff = float(batch.n_eff[b, j])
            shift = shrinkage * (prior - float(batch.prior[b, j]))
            value = p[model] + shift / (n_eff + shrinkage) if n_eff + shrinkage > 0 else prior
            p[model] = min(1.0, max(0.0, value))
        out.append(p)
    return out


def plan_views(
    signals: QuerySignals,
    plan: Plan,
    resources: RouterResources,
    taxonomy_threshold: float,
) -> list[CascadeView]:
    """The views the graph records for this query under a fixed plan, one per stage,
    calling every stage (`stop_early=False`); models without a recording fail as
    unavailable, as the replay model does."""
    record = signals.record
    category = signals.top if signals.top_p >= taxonomy_threshold else None
    stages = plan.get(category or "*") or plan["*"]
    models = [m for stage in stages for m in stage if m in resources.pool.names]
    options = category_options(resources, category, record.query, models)
    candidates = fixed_plan(stages, options)
    views: list[CascadeView] = []
    attempts = []
    by_stage: dict[int, list[int]] = {}
    for i, c in enumerate(candidates):
        by_stage.setdefault(c["stage"], []).append(i)
    for stage, members in sorted(by_stage.items()):
        trust = reliabilities(
            signals.table, [candidates[i]["model"] for i in members], signals.probs
        )
        for i in members:
            model = candidates[i]["model"]
            if model not in signals.keys:
                attempts.append(new_attempt(model, "unavailable", i, stage))
                continue
            attempts.append(
                new_attempt(
                    model,
                    "answered",
                    i,
                    stage,
                    answer=record.outcomes[model].response or "",
                    cost_usd=signals.costs[model],
                    answer_key=signals.keys[model],
                    reliability=trust[model],
                    memory_p=signals.memory[model],
                )
            )
        upcoming = by_stage.get(stage + 1, [])
        views.append(
            CascadeView(
                attempts=[policy.view_of(a) for a in attempts],
                next_models=[candidates[i]["model"] for i in upcoming],
                next_cost_usd=sum(candidates[i]["cost_bound_usd"] for i in upcoming)
                if upcoming
                else None,
                n_options=signals.n_options,
            )
        )
    return views


def fold_of(record_id: str, folds: int) -> int:
    """A query's cross-fitting fold: a hash of its id, fixed like the split rule."""
    import hashlib

    return int(hashlib.sha256(f"fold:{record_id}".encode()).hexdigest(), 16) % folds


def fold_tables(
    records: Sequence[Record], fold: Sequence[int], folds: int, smoothing: float
) -> list[ReliabilityTable]:
    """Per fold, models' accuracy by category on the other folds' recordings."""
    tables = []
    for f in range(folds):
        overall: dict[str, list[float]] = {}
        by_category: dict[str, dict[str, list[float]]] = {}
        for record, g in zip(records, fold, strict=True):
            if g == f:
                continue
            for model, outcome in record.outcomes.items():
                for counts in (overall, by_category.setdefault(record.category, {})):
                    right_seen = counts.setdefault(model, [0.0, 0.0])
                    right_seen[0] += outcome.score
                    right_seen[1] += 1.0
        tables.append(
            table_from_counts(
                {m: (r, n) for m, (r, n) in overall.items()},
                {c: {m: (r, n) for m, (r, n) in cs.items()} for c, cs in by_category.items()},
                smoothing,
            )
        )
    return tables


def fold_classifiers(
    classifier: CategoryClassifier,
    vectors: np.ndarray,
    labels: Sequence[str],
    fold: Sequence[int],
    folds: int,
) -> list[CategoryClassifier]:
    """Per fold, the category classifier refitted on the other folds' labelled queries
    (with the served one's temperatures)."""
    out = []
    fold_arr = np.asarray(fold)
    for f in range(folds):
        keep = fold_arr != f
        fitted = CategoryClassifier.fit(
            classifier.categories,
            vectors[keep],
            [label for label, k in zip(labels, keep, strict=True) if k],
            classifier.embedder_id,
            k=classifier.k,
        )
        fitted.neighbour_temperature = classifier.neighbour_temperature
        fitted.calibration_temperature = classifier.calibration_temperature
        out.append(fitted)
    return out


def routing_vectors(records: Sequence[Record], resources: RouterResources) -> np.ndarray:
    """The routing text of each query embedded as classify embeds it (cached vectors)."""
    return resources.embedder.embed([routing_text(r.query) for r in records])
