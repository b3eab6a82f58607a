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
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emafusion.evals.baselines import Matrices, complete
from emafusion.graph.context import Context
from emafusion.graph.router import make_graph
from emafusion.nodes.feedback import submit_feedback
from emafusion.nodes.resources import RouterResources
from emafusion.stores.answers import answer_key
from emafusion.stores.artifacts import build_router_artifacts
from emafusion.stores.cost import COST_RECORDED
from emafusion.stores.pool import Pool
from emafusion.stores.providers import ReplayChatModel, ReplayStore, recorded_call_cost
from emafusion.stores.recordings import Outcome, Record, RecordSet
from emafusion.train.graph_runs import score_result

SCENARIOS = ("warm", "drift", "new-model")
STREAM_SPLITS = ("validation", "test")
ResourceFactory = Callable[[], RouterResources]


def unit(*parts: object) -> float:
    """A number in [0, 1) fixed by its parts: seeded choices that do not depend on order."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


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


# --- drift ----------------------------------------------------------------------------------


def _wrong_response(stream: Sequence[Record], i: int, model: str) -> str:
    """A recorded answer that is wrong for query i, where the model was right: another
    model's wrong answer to it; else the model's own answer to an earlier query that
    commits to another answer here (a reply to another question); else nothing."""
    record = stream[i]
    for name in sorted(record.outcomes):
        outcome = record.outcomes[name]
        if name != model and outcome.score < 0.5 and outcome.response:
            return outcome.response
    own = record.outcomes[model].response
    right = answer_key(record.query, own)
    for j in [*range(i - 1, -1, -1), *range(i + 1, len(stream))]:
        other = stream[j].outcomes.get(model)
        text = other.response if other is not None else None
        if text and text != own and answer_key(record.query, text) != right:
            return text
    return ""


def degrade(
    stream: Sequence[Record], model: str, start: int, share: float, seed: int = 0
) -> tuple[list[Record], set[str]]:
    """The stream with `model`'s right answer replaced by a wrong recorded one, scored 0,
    on a seeded `share` of the queries from position `start` on (where it was wrong
    already, it stays so); and the ids replaced. Cost and tokens stay the recorded ones:
    the model got worse, not cheaper."""
    out, degraded = list(stream), set[str]()
    for i in range(start, len(stream)):
        record = stream[i]
        old = record.outcomes.get(model)
        if old is None or old.score < 0.5 or unit(seed, record.id, "drift") >= share:
            continue
        new = Outcome(
            response=_wrong_response(stream, i, model),
            score=0.0,
            cost_usd=old.cost_usd,
            input_tokens=old.input_tokens,
            output_tokens=old.output_tokens,
        )
        out[i] = record.model_copy(update={"outcomes": {**record.outcomes, model: new}})
        degraded.add(record.id)
    return out, degraded


def serve_degraded(resources: RouterResources, model: str, stream: Sequence[Record]) -> None:
    """`model` answers from the degraded recordings from now on (other models unchanged)."""
    records = resources.records
    others = [] if records is None else records.records
    replaced = {r.id: r for r in stream}
    merged = [replaced.get(r.id, r) for r in others] + [
        r for r in stream if records is None or records.get(r.id) is None
    ]
    name = records.name if records is not None else "stream"
    store = ReplayStore(RecordSet(name, merged, source="degraded replay"))
    resources.chat_models[model] = ReplayChatModel(
        model_name=model, prices=resources.pool.get(model).prices, store=store
    )


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
    preset: str = "default"

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


def _context(resources: RouterResources, settings: StreamSettings, record: bool) -> Context:
    # Without an evaluated preset the run uses Context's defaults (what a bare router does).
    has_preset = resources.presets is not None and settings.preset in resources.presets.presets
    # A preset fitted with the newcomer in the pool would not describe the router before it.
    if has_preset and settings.scenario != "new-model":
        return Context(preset=settings.preset, record_outcomes=record)
    return Context(record_outcomes=record)


def _most_used(steps: Sequence[Step]) -> str:
    counts = Counter(s.model for s in steps if s.model is not None)
    if not counts:
        raise ValueError("the static router answered no query before T: no model to degrade")
    return counts.most_common(1)[0][0]


def without_model(resources: RouterResources, records: RecordSet, model: str) -> Pool:
    """Take `model` out of the router: the pool without it, and the memory and classifier
    rebuilt from train as if it had never answered. Returns the full pool, for joining."""
    full = resources.pool
    pool = Pool(dataset=full.dataset, models=[m for m in full.models if m.name != model])
    stripped = RecordSet(
        records.name,
        [
            r.model_copy(update={"outcomes": {k: v for k, v in r.outcomes.items() if k != model}})
            for r in records.records
        ],
        source=f"{records.source}, without {model}",
    )
    artifacts = build_router_artifacts(
        stripped,
        resources.embedder,
        resources.taxonomy,
        pool,
        splits=("train",),
        calibrate_on="validation",
    )
    resources.memory, resources.classifier = artifacts.memory, artifacts.classifier
    # The evaluated fusion model and presets were fitted with it: they do not apply.
    resources.fusion, resources.presets = None, None
    resources.pool = pool
    return full


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
        static = await _replay_joining(
            static_res, stream, drift_at, full, static_ctx, **common, log=log
        )
    else:
        static = await replay(static_res, stream, static_ctx, **common, log=log)
    unchanged = _memory_fingerprint(static_res) == fingerprint
    learning_res = make_resources()
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
        learning = await _replay_joining(
            learning_res, scored, drift_at, full, learning_ctx, **options
        )
    else:
        learning = await replay(learning_res, scored, learning_ctx, **options)
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
