"""The router on a stream of traffic: it learns from its own answers while they come.

Recorded queries (validation + test, never train: the memory was built from train) are
replayed in one seeded order through the real compiled graph, each batch after the one
before it has been recorded, so what the router learned from query i shapes its choice on
query i + 1. Beside it runs the same router with recording off (static). A fraction of the
answers gets ground-truth feedback (`submit_feedback` on the run's id, the recorded score
of the answering model), the rest only the judges' verdicts.

Scenarios:
- `warm`: the memory from train, the stream as recorded.
- `drift`: from query T on, one model answers a share of the queries it had right with a
  wrong recorded answer (another model's wrong answer to the same query, else its own
  answer to another query) and is scored wrong; the router should move its traffic away.
- `new-model`: one model (default: the most accurate on train) is out of the pool and the
  memory until query T, then joins the pool with no history; does the router find it?
- `cold`: an empty memory, only the pool's prices: the router learns from feedback and
  its judges alone.
- `unseen-category`: one category (default: the stream's largest) is withheld from train
  entirely (no memory rows, no classifier label) and arrives in the stream.

`new-model` and `cold` also replay the `warm` router, learning under the same feedback, as
the reference their targets are stated against.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emafusion.evals.baselines import Matrices, complete
from emafusion.evals.stream_worlds import (
    degrade,
    emptied,
    largest_category,
    serve_degraded,
    unit,
    withhold_category,
    without_model,
)
from emafusion.graph.context import Context
from emafusion.graph.router import make_graph
from emafusion.nodes.feedback import submit_feedback
from emafusion.nodes.resources import RouterResources
from emafusion.stores.cost import COST_RECORDED
from emafusion.stores.pool import Pool
from emafusion.stores.providers import recorded_call_cost
from emafusion.stores.recordings import Record, RecordSet
from emafusion.train.graph_runs import score_result

SCENARIOS = ("warm", "drift", "new-model", "cold", "unseen-category")
STREAM_SPLITS = ("validation", "test")
ResourceFactory = Callable[[], RouterResources]


def stream_order(records: RecordSet, pool: Pool, seed: int = 0, limit: int = 0) -> list[Record]:
    """Validation + test queries every pool model has a recording of, in the seed's order
    (the same set in any load order: sorted by id before the shuffle). Train never: the
    memory the stream starts from was built from it."""
    pooled = sorted(
        (r for split in STREAM_SPLITS for r in complete(records.split(split), pool)),
        key=lambda r: r.id,
    )
    order = np.random.default_rng(seed).permutation(len(pooled))
    stream = [pooled[i] for i in order]
    return stream[:limit] if limit else stream


# --- the replay -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One query of the stream as the router answered it."""

    record_id: str
    model: str | None
    correct: float
    cost_usd: float
    feedback: bool  # ground truth was sent for this answer


async def replay(
    resources: RouterResources,
    stream: Sequence[Record],
    context: Context,
    *,
    feedback: float = 0.0,
    seed: int = 0,
    concurrency: int = 4,
    log: Callable[[str], None] | None = None,
) -> list[Step]:
    """Route the stream in order, `concurrency` queries at a time (each batch sees what
    the ones before it recorded), sending ground truth for a seeded `feedback` share."""
    graph = make_graph(resources)
    steps: list[Step] = []
    batch = max(1, concurrency)
    for start in range(0, len(stream), batch):
        chunk = stream[start : start + batch]
        outputs = await asyncio.gather(
            *(graph.ainvoke({"query": r.query, "record_id": r.id}, context=context) for r in chunk)
        )
        for record, output in zip(chunk, outputs, strict=True):
            result = score_result(record, output)
            sent = False
            if result.model is not None and unit(seed, record.id, "feedback") < feedback:
                submit_feedback(resources, output["run_id"], result.correct)
                sent = True
            steps.append(Step(record.id, result.model, result.correct, result.cost_usd, sent))
        if log is not None and (start // batch) % max(1, 200 // batch) == 0 and start:
            done = len(steps)
            acc = sum(s.correct for s in steps) / done
            log(f"  {done:,}/{len(stream):,} queries, accuracy so far {acc:.4f}")
    return steps


# --- references from the recordings ---------------------------------------------------------


@dataclass
class References:
    """Per stream query: the best single model's and the oracle's outcome and cost."""

    best: str
    best_correct: np.ndarray
    best_cost: np.ndarray
    oracle_correct: np.ndarray
    oracle_cost: np.ndarray
    cost_basis: str

    @classmethod
    def build(cls, stream: Sequence[Record], train: Sequence[Record], pool: Pool) -> References:
        m_train = Matrices.build(complete(train, pool), pool)
        # The reference model is the most accurate on train: never chosen on the stream.
        best_j = int(np.argmax(np.nanmean(m_train.score, axis=0)))
        m = Matrices.build(stream, pool)
        oracle = m.oracle_row()
        oracle_cost = np.array(
            [
                min(
                    (m.cost[i, j] for j in range(len(m.models)) if m.score[i, j] >= 0.5),
                    default=float(np.nanmin(m.cost[i])),
                )
                for i in range(len(stream))
            ]
        )
        recorded = m.recorded_cost and all(
            recorded_call_cost(pool.get(name).prices, r.query, o)[2] == COST_RECORDED
            for r in stream[:50]
            for name, o in r.outcomes.items()
            if name in pool.names
        )
        return cls(
            best=m.models[best_j],
            best_correct=np.nan_to_num(m.score[:, best_j], nan=0.0),
            best_cost=np.nan_to_num(m.cost[:, best_j], nan=0.0),
            oracle_correct=oracle.correct,
            oracle_cost=oracle_cost,
            cost_basis="recorded USD" if recorded else "list prices x estimated tokens (USD)",
        )


# --- a scenario -----------------------------------------------------------------------------


@dataclass
class StreamSettings:
    scenario: str = "warm"
    feedback: float = 0.0
    seed: int = 0
    window: int = 200
    limit: int = 0
    concurrency: int = 4
    drift_at: int | None = None  # default: a third of the stream
    drift_model: str | None = None  # default: the static router's most used model before T
    drift_share: float = 0.5
    new_model: str | None = None  # new-model: who joins at T (default: best on train)
    category: str | None = None  # unseen-category: the one withheld (default: the largest)
    preset: str = "default"
    # Run settings over Context's defaults (e.g. {"novel_queries": "strongest"}).
    context: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"scenario {self.scenario!r}: expected one of {', '.join(SCENARIOS)}")
        if not 0.0 <= self.feedback <= 1.0:
            raise ValueError(f"feedback must be a share in [0, 1], got {self.feedback}")
        if not 0.0 < self.drift_share <= 1.0:
            raise ValueError(f"drift share must be in (0, 1], got {self.drift_share}")
        if self.window < 1:
            raise ValueError(f"window must be at least 1 query, got {self.window}")


@dataclass
class StreamRun:
    """What a scenario produced: both runs' steps on the same stream, and the references."""

    settings: StreamSettings
    dataset: str
    stream: list[Record]
    learning: list[Step]
    static: list[Step]
    references: References
    drift_at: int | None = None
    drift_model: str | None = None
    degraded_ids: set[str] = field(default_factory=set)
    new_model: str | None = None
    memory_before: int = 0
    memory_after: int = 0
    static_memory_unchanged: bool = True
    reference: list[Step] | None = None  # the warm router, learning (new-model, cold)
    withheld: str | None = None  # unseen-category


def _context(resources: RouterResources, settings: StreamSettings, record: bool) -> Context:
    # Without an evaluated preset the run uses Context's defaults (what a bare router does);
    # scenarios that change what the router knows drop the presets fitted on the full one.
    has_preset = resources.presets is not None and settings.preset in resources.presets.presets
    if has_preset:
        return Context(preset=settings.preset, record_outcomes=record, **settings.context)
    return Context(record_outcomes=record, **settings.context)


def _most_used(steps: Sequence[Step]) -> str:
    counts = Counter(s.model for s in steps if s.model is not None)
    if not counts:
        raise ValueError("the static router answered no query before T: no model to degrade")
    return counts.most_common(1)[0][0]


async def _replay_joining(
    resources: RouterResources,
    stream: Sequence[Record],
    at: int,
    full: Pool,
    context: Context,
    **options: Any,
) -> list[Step]:
    """The stream up to `at` with the resources as they are, then with the `full` pool."""
    steps = await replay(resources, stream[:at], context, **options)
    resources.pool = full  # it joins, with no history
    return steps + await replay(resources, stream[at:], context, **options)


async def run_scenario(
    make_resources: ResourceFactory,
    records: RecordSet,
    pool: Pool,
    settings: StreamSettings,
    log: Callable[[str], None] = print,
) -> StreamRun:
    """The static router, then the learning one (a fresh copy of the same router), on the
    same stream; for `drift`, the same model degraded from the same query in both."""
    stream = stream_order(records, pool, settings.seed, settings.limit)
    if not stream:
        raise ValueError(f"{records.name}: no validation or test query with every model recorded")
    common: dict[str, Any] = {"seed": settings.seed, "concurrency": settings.concurrency}
    static_res = make_resources()
    fingerprint = _memory_fingerprint(static_res)
    static_ctx = _context(static_res, settings, record=False)
    drift_at: int | None = None
    model: str | None = None
    degraded_ids: set[str] = set()
    newcomer: str | None = None
    scored = stream
    withheld: str | None = None
    if settings.scenario == "unseen-category":
        withheld = settings.category or largest_category(stream)
    log(f"[static] {len(stream):,} queries, recording off")
    if settings.scenario == "drift":
        drift_at = settings.drift_at if settings.drift_at is not None else len(stream) // 3
        if not 0 < drift_at < len(stream):
            raise ValueError(f"drift point {drift_at} is outside the stream (1..{len(stream) - 1})")
        static = await replay(static_res, stream[:drift_at], static_ctx, **common, log=log)
        model = settings.drift_model or _most_used(static)
        if model not in pool.names:
            raise ValueError(f"drift model {model!r} is not in the pool ({', '.join(pool.names)})")
        scored, degraded_ids = degrade(stream, model, drift_at, settings.drift_share, settings.seed)
        log(f"[drift] {model} degraded on {len(degraded_ids):,} queries from query {drift_at}")
        serve_degraded(static_res, model, scored)
        static += await replay(static_res, scored[drift_at:], static_ctx, **common, log=log)
    elif settings.scenario == "new-model":
        drift_at = settings.drift_at if settings.drift_at is not None else len(stream) // 3
        if not 0 < drift_at < len(stream):
            raise ValueError(f"join point {drift_at} is outside the stream (1..{len(stream) - 1})")
        newcomer = settings.new_model or _best_on_train(records, pool)
        if newcomer not in pool.names:
            raise ValueError(f"new model {newcomer!r} is not in the pool ({', '.join(pool.names)})")
        log(f"[new-model] {newcomer} joins at query {drift_at}, with no history")
        full = without_model(static_res, records, newcomer)
        fingerprint = _memory_fingerprint(static_res)  # the memory rebuilt without it
        static_ctx = _context(static_res, settings, record=False)  # its presets are gone
        static = await _replay_joining(
            static_res, stream, drift_at, full, static_ctx, **common, log=log
        )
    else:
        if settings.scenario == "cold":
            emptied(static_res)
        elif settings.scenario == "unseen-category":
            if withheld not in {r.category for r in stream}:
                raise ValueError(f"category {withheld!r} is not in the stream")
            log(f"[unseen-category] {withheld} withheld from train (memory and classifier)")
            withhold_category(static_res, records, withheld)
        fingerprint = _memory_fingerprint(static_res)
        static_ctx = _context(static_res, settings, record=False)
        static = await replay(static_res, stream, static_ctx, **common, log=log)
    unchanged = _memory_fingerprint(static_res) == fingerprint
    learning_res = make_resources()
    if settings.scenario == "cold":
        emptied(learning_res)
    elif settings.scenario == "unseen-category":
        assert withheld is not None
        withhold_category(learning_res, records, withheld)
    if model is not None:
        serve_degraded(learning_res, model, scored)
    before = len(learning_res.memory)
    log(f"[learning] recording on, feedback on {settings.feedback:.0%} of the answers")
    learning_ctx = _context(learning_res, settings, record=True)
    options: dict[str, Any] = {**common, "feedback": settings.feedback, "log": log}
    if settings.scenario == "new-model":
        assert drift_at is not None and newcomer is not None
        full = without_model(learning_res, records, newcomer)
        before = len(learning_res.memory)
        learning_ctx = _context(learning_res, settings, record=True)
        learning = await _replay_joining(
            learning_res, scored, drift_at, full, learning_ctx, **options
        )
    else:
        learning = await replay(learning_res, scored, learning_ctx, **options)
    reference = None
    if settings.scenario in ("new-model", "cold"):
        log("[reference] the warm router, learning under the same feedback")
        warm_res = make_resources()
        # The same run settings as the learning router, which has no presets here.
        warm_res.fusion, warm_res.presets = None, None
        warm_ctx = _context(warm_res, settings, record=True)
        reference = await replay(warm_res, scored, warm_ctx, **options)
    return StreamRun(
        settings=settings,
        dataset=records.name,
        stream=scored,
        learning=learning,
        static=static,
        references=References.build(scored, records.split("train"), pool),
        drift_at=drift_at,
        drift_model=model,
        degraded_ids=degraded_ids,
        memory_before=before,
        memory_after=len(learning_res.memory),
        static_memory_unchanged=unchanged,
        new_model=newcomer,
        reference=reference,
        withheld=withheld,
    )


def _best_on_train(records: RecordSet, pool: Pool) -> str:
    m = Matrices.build(complete(records.split("train"), pool), pool)
    return m.models[int(np.argmax(np.nanmean(m.score, axis=0)))]


def _memory_fingerprint(resources: RouterResources) -> tuple[int, tuple[tuple[str, int], ...]]:
    """How many queries the memory holds and how many outcomes of each source."""
    memory = resources.memory
    sources: Counter[str] = Counter()
    for query_id in memory.query_ids:
        stored = memory.get(query_id)
        if stored is not None:
            for outcomes in (stored.ground_truth, stored.judged):
                sources.update(o.source for o in outcomes.values())
    return len(memory), tuple(sorted(sources.items()))
