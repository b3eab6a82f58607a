"""What the nodes share (pool, chat models, embedder, memory, classifier, judges' artifacts),
built once per router directory and handed to the graph by `make_graph(resources)`.

Paths and data sources are deployment settings (`DeploymentSettings`: environment
variables, `langgraph.json`'s env, the command line), never a run's context. A
`RouterDirectory` loads its resources on first use and reloads them when the router
directory's manifest changes on disk (a new `emafusion eval` or `judges train` run), so a
long-running server picks up a retrained router without a restart.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from langchain_core.language_models import BaseChatModel

from emafusion.graph.context import Context
from emafusion.nodes.reliability import ReliabilityTable, table_from_memory
from emafusion.stores.artifacts import (
    ROUTER_MANIFEST,
    ArtifactsError,
    RouterArtifacts,
    build_router_artifacts,
    default_router_dir,
)
from emafusion.stores.combiner import CombinerBook, load_combiners
from emafusion.stores.drift import RecentResiduals
from emafusion.stores.embeddings import EMBEDDER_KINDS, Embedder, default_embedder
from emafusion.stores.fusion import FusionModel, load_fusion
from emafusion.stores.judged import JudgedEvidence
from emafusion.stores.memory import ModelStats, OutcomeMemory, OutcomeMemoryError
from emafusion.stores.memory.postgres import open_postgres_memory
from emafusion.stores.novelty import NoveltyRule
from emafusion.stores.pool import ModelSpec, Pool, PoolError, load_default_pool, load_pool
from emafusion.stores.presets import PresetBook, PresetError, load_presets
from emafusion.stores.providers import ReplayStore, build_chat_model
from emafusion.stores.record_writer import RecordWriter
from emafusion.stores.recordings import RecordSet, load_dataset
from emafusion.stores.run_ledger import RunLedger
from emafusion.stores.taxonomy import (
    CategoryClassifier,
    Taxonomy,
    TaxonomyError,
    default_taxonomy_path,
    load_taxonomy,
)
from emafusion.stores.verifier import LearnedVerifier, load_verifier

logger = logging.getLogger(__name__)
RELIABILITY_TTL_S = 5.0
FOLLOW_INTERVAL_S = 1.0  # a shared memory polls its store at least this often


@dataclass
class RouterResources:
    pool: Pool
    chat_models: dict[str, BaseChatModel]
    embedder: Embedder
    memory: OutcomeMemory
    classifier: CategoryClassifier
    taxonomy: Taxonomy
    records: RecordSet | None = None
    router_dir: Path | None = None
    # Trained by `emafusion judges train` and saved beside the memory; None until then.
    verifier: LearnedVerifier | None = None
    combiners: CombinerBook | None = None
    # Models the 'llm' judge may ask, by name (the deployment's judge pool).
    judge_models: dict[str, tuple[ModelSpec, BaseChatModel]] = field(default_factory=dict)
    # How answers are fused (fusion.json, fitted by the evaluation); None: the defaults.
    fusion: FusionModel | None = None
    # The operating points the evaluation chose (presets.json); None until then.
    presets: PresetBook | None = None
    # When a query is unlike every stored one (fitted on held-out categories); None: never.
    novelty: NoveltyRule | None = None
    # Per model, how far its live feedback runs from the memory's predictions (drift).
    drift: RecentResiduals = field(default_factory=RecentResiduals)
    # What a judged outcome counts, measured on held-out labels; None: nothing (weight 0).
    judged: JudgedEvidence | None = None
    # Whether live outcomes are written to router_dir (a deployment choice).
    persist_outcomes: bool = False
    # Recent runs, for feedback (on disk too when outcomes persist).
    runs: RunLedger = field(default_factory=RunLedger)
    # Serializes add-then-save of live outcomes (the memory itself is thread-safe).
    memory_lock: threading.Lock = field(default_factory=threading.Lock)
    # Writes what `record` hands it (ledger entry, outcomes) off the answer's path; readers
    # that need their own writes call `flush_records()` first.
    writer: RecordWriter = field(default_factory=RecordWriter)
    _reliability: tuple[tuple[int, int, float], float, ReliabilityTable] | None = field(
        default=None, repr=False
    )
    _stats: dict[str | None, tuple[tuple[int, int, str | None], float, dict[str, ModelStats]]] = (
        field(default_factory=dict, repr=False)
    )

    def use_judged(self, evidence: JudgedEvidence) -> None:
        """Count judged outcomes as measured: the memory's weight, the drift test's baseline."""
        self.judged = evidence
        self.memory.weigh_judged(evidence.weight)
        self.drift.baseline = evidence.baseline

    def spec(self, model: str) -> ModelSpec:
        return self.pool.get(model)

    def flush_records(self, timeout: float | None = None) -> bool:
        """Wait until every run's record handed to the writer so far is written (in the
        memory and the ledger); False on timeout."""
        return self.writer.flush(timeout)

    def model_stats(self, category: str | None) -> dict[str, ModelStats]:
        """The memory's per-model record (in a category), cached like the reliability
        table: planning reads it for every query."""
        key = (id(self.memory), len(self.memory), category)
        now = time.monotonic()
        cached = self._stats.get(category)
        if cached is None or cached[0] != key or now - cached[1] > RELIABILITY_TTL_S:
            cached = self._stats[category] = (key, now, self.memory.model_stats(category))
        return cached[2]

    def reliability_table(self, smoothing: float) -> ReliabilityTable:
        """Models' accuracy by category in the memory, recomputed when it has grown (or
        every few seconds: feedback changes outcomes without adding queries)."""
        key = (id(self.memory), len(self.memory), smoothing)
        cached = self._reliability
        now = time.monotonic()
        if cached is None or cached[0] != key or now - cached[1] > RELIABILITY_TTL_S:
            table = table_from_memory(self.memory, self.classifier.categories, smoothing)
            cached = self._reliability = (key, now, table)
        return cached[2]

    @classmethod
    def create(
        cls,
        pool: Pool,
        artifacts: RouterArtifacts,
        embedder: Embedder,
        taxonomy: Taxonomy,
        records: RecordSet | None = None,
        router_dir: Path | None = None,
        chat_models: Mapping[str, BaseChatModel] | None = None,
    ) -> RouterResources:
        if records is not None:
            pool.check_recordings(records)
        store = ReplayStore(records) if records is not None else None
        models = dict(chat_models or {})
        for spec in pool.models:
            models.setdefault(spec.name, build_chat_model(spec, store))
        try:
            novelty = NoveltyRule.from_json(artifacts.info.get("novelty"))
            drift = RecentResiduals.from_json(artifacts.info.get("drift"))
            judged = JudgedEvidence.from_json(artifacts.info.get("judged"))
        except ValueError as exc:
            where = f"{router_dir}/" if router_dir is not None else ""
            raise ArtifactsError(f"{where}{exc}") from None
        resources = cls(
            pool=pool,
            chat_models=models,
            embedder=embedder,
            memory=artifacts.memory,
            classifier=artifacts.classifier,
            taxonomy=taxonomy,
            records=records,
            router_dir=router_dir,
            novelty=novelty,
            drift=drift,
        )
        if judged is not None:
            resources.use_judged(judged)
        return resources


# Set while a graph node runs (`graph.router`): there the run's entry already waited for the
# records queued before it, and a read must not stall the event loop on concurrent runs'.
IN_RUN: contextvars.ContextVar[bool] = contextvars.ContextVar("emafusion_in_run", default=False)


def _get_memory(self: RouterResources) -> OutcomeMemory:
    """The memory; read outside a run (an evaluation's tally, a test, an embedding
    application), it first waits for the records queued so far: no stale reads."""
    writer: RecordWriter | None = self.__dict__.get("writer")
    if writer is not None and not IN_RUN.get() and writer.pending:
        writer.flush()
    memory: OutcomeMemory = self.__dict__["_memory"]
    return memory


def _set_memory(self: RouterResources, memory: OutcomeMemory) -> None:
    self.__dict__["_memory"] = memory


RouterResources.memory = property(_get_memory, _set_memory)


class ResourceSource(Protocol):
    """Where the nodes get their resources from (one per compiled graph)."""

    async def aget(self) -> RouterResources: ...


@dataclass(frozen=True)
class StaticResources:
    """Resources built by the caller (evaluation, tests, an embedding application)."""

    resources: RouterResources

    async def aget(self) -> RouterResources:
        return self.resources


def _env_path(environ: Mapping[str, str], name: str) -> Path | None:
    value = environ.get(name, "").strip()
    return Path(value).expanduser() if value else None


@dataclass(frozen=True)
class DeploymentSettings:
    """Where a deployment's router comes from. Only the deployment sets these."""

    dataset: str | None = None  # published recordings replay models answer from
    recordings: Path | None = None  # a JSON Lines recordings file instead
    pool: Path | None = None  # pool file; default: the dataset's
    router_dir: Path | None = None  # default: the user cache, per recordings
    taxonomy: Path | None = None
    judge_pool: Path | None = None  # pool file of models the 'llm' judge may ask
    data_dir: Path | None = None
    persist_outcomes: bool = False  # write live outcomes to router_dir
    build_if_missing: bool = True  # build a router from train into an empty router_dir
    # postgresql://... : the memory lives there, shared by every replica (see README, Scale);
    # None: in router_dir. With it, outcomes always persist (to the database).
    store_url: str | None = None
    compact_every_s: float | None = None  # the elected replica compacts the shared log

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DeploymentSettings:
        env = os.environ if environ is None else environ
        recordings = _env_path(env, "EMAFUSION_RECORDINGS")
        dataset = env.get("EMAFUSION_DATASET", "").strip() or None
        if dataset is None and recordings is None:
            dataset = "mmlu-pro"
        return cls(
            dataset=None if recordings else dataset,
            recordings=recordings,
            pool=_env_path(env, "EMAFUSION_POOL"),
            router_dir=_env_path(env, "EMAFUSION_ROUTER_DIR"),
            taxonomy=_env_path(env, "EMAFUSION_TAXONOMY"),
            judge_pool=_env_path(env, "EMAFUSION_JUDGE_POOL"),
            data_dir=_env_path(env, "EMAFUSION_DATA_DIR"),
            persist_outcomes=env.get("EMAFUSION_PERSIST_OUTCOMES", "").lower()
            in ("1", "true", "yes", "on"),
            store_url=env.get("EMAFUSION_STORE_URL", "").strip() or None,
            compact_every_s=float(env["EMAFUSION_COMPACT_EVERY_S"])
            if env.get("EMAFUSION_COMPACT_EVERY_S", "").strip()
            else None,
        )

    @property
    def name(self) -> str:
        if self.recordings is not None:
            return self.recordings.stem
        return self.dataset or "live"


def _manifest_stamp(router_dir: Path) -> tuple[int, int] | None:
    try:
        stat = (router_dir / ROUTER_MANIFEST).stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


class RouterDirectory:
    """Resources of one deployment, loaded on first use, reloaded when the router changes.

    The check for a change is one `stat` of the router manifest, at most every
    `check_every_s`; a reload happens off the event loop and swaps the whole set at once.
    """

    def __init__(self, settings: DeploymentSettings, check_every_s: float = 2.0) -> None:
        self.settings = settings
        self.check_every_s = check_every_s
        self._lock = threading.Lock()
        self._resources: RouterResources | None = None
        self._stamp: tuple[int, int] | None = None
        self._checked_at = 0.0

    @property
    def router_dir(self) -> Path:
        return self.settings.router_dir or default_router_dir(self.settings.name)

    def _due(self) -> bool:
        return time.monotonic() - self._checked_at >= self.check_every_s

    def _changed(self) -> bool:
        self._checked_at = time.monotonic()
        return _manifest_stamp(self.router_dir) != self._stamp

    def get(self) -> RouterResources:
        with self._lock:
            if self._resources is None or (self._due() and self._changed()):
                if self._resources is not None:
                    logger.info("router directory %s changed: reloading", self.router_dir)
                self._resources = load_router(self.settings)
                self._stamp = _manifest_stamp(self.router_dir)
                self._checked_at = time.monotonic()
            return self._resources

    async def aget(self) -> RouterResources:
        if self._resources is not None and not self._due():
            return self._resources
        return await asyncio.to_thread(self.get)


def load_router(settings: DeploymentSettings) -> RouterResources:
    """Build a deployment's resources (and its router, from train, into an empty dir)."""
    records: RecordSet | None = None
    if settings.recordings or settings.dataset:
        records = load_dataset(
            dataset=None if settings.recordings else settings.dataset,
            recordings=settings.recordings,
            data_dir=settings.data_dir,
        )
    if settings.pool:
        pool = load_pool(settings.pool)
    elif settings.dataset:
        pool = load_default_pool(settings.dataset)
    else:
        raise PoolError("no pool: set EMAFUSION_POOL to a pool file (or EMAFUSION_DATASET).")
    embedder = default_embedder()
    router_dir = settings.router_dir or default_router_dir(settings.name)
    taxonomy = _taxonomy(settings)
    artifacts = _artifacts(router_dir, embedder, records, taxonomy, pool, settings)
    if settings.store_url:  # the shared memory, seeded from router_dir's on first use
        artifacts.memory = open_postgres_memory(
            settings.store_url,
            settings.name,
            seed=artifacts.memory,
            expected_embedder_id=embedder.id,
        )
        artifacts.memory.follow(FOLLOW_INTERVAL_S, compact_every_s=settings.compact_every_s)
    if taxonomy is None:
        taxonomy = Taxonomy.from_names(artifacts.classifier.categories)
    resources = RouterResources.create(pool, artifacts, embedder, taxonomy, records, router_dir)
    # Absent files mean "not trained yet"; a damaged or foreign one raises, never ignored.
    resources.verifier = load_verifier(router_dir, embedder.id)
    resources.combiners = load_combiners(router_dir)
    resources.fusion = load_fusion(router_dir)
    resources.presets = checked_presets(load_presets(router_dir))
    resources.persist_outcomes = settings.persist_outcomes or settings.store_url is not None
    resources.runs = RunLedger(router_dir if settings.persist_outcomes else None)
    if settings.judge_pool is not None:
        judge_pool = load_pool(settings.judge_pool)
        resources.judge_models = {
            spec.name: (spec, build_chat_model(spec)) for spec in judge_pool.models
        }
    return resources


def checked_presets(book: PresetBook | None) -> PresetBook | None:
    """Every preset's settings must be valid run settings: a bad one names itself."""
    if book is None:
        return None
    for preset in book.presets.values():
        try:
            Context(**preset.settings)
        except ValueError as exc:
            raise PresetError(
                f"{book.source}: preset {preset.name!r} has invalid settings: {exc}. Fix: "
                f"rerun `emafusion eval` for this router directory."
            ) from None
    return book


def _artifacts(
    router_dir: Path,
    embedder: Embedder,
    records: RecordSet | None,
    taxonomy: Taxonomy | None,
    pool: Pool,
    settings: DeploymentSettings,
) -> RouterArtifacts:
    try:
        artifacts = RouterArtifacts.load(router_dir, embedder.id)
    except (OutcomeMemoryError, TaxonomyError) as exc:
        if "embedder" not in str(exc):
            raise
        raise ArtifactsError(
            f"{router_dir} was built with another embedder than this process uses "
            f"({embedder.id}): {exc}. Fix: rebuild it (`emafusion eval`, or `emafusion memory "
            f"build --out {router_dir}`), or set EMAFUSION_EMBEDDER to the embedder it was "
            f"built with ({' | '.join(EMBEDDER_KINDS)})."
        ) from exc
    except ArtifactsError:
        # Only a directory with nothing in it is built anew: anything else (a memory
        # without its manifest, a damaged file) may hold live outcomes and is an error.
        if (
            records is None
            or not settings.build_if_missing
            or (router_dir.exists() and any(router_dir.iterdir()))
        ):
            raise
    else:
        built_for = artifacts.info.get("dataset")
        if records is not None and built_for not in (None, records.name):
            raise ArtifactsError(
                f"{router_dir} was built from {built_for!r} recordings, but this deployment "
                f"replays {records.name!r}. Fix: point EMAFUSION_ROUTER_DIR (--router-dir) at a "
                f"router built for {records.name!r}, or build one there with `emafusion memory "
                f"build`."
            )
        return artifacts
    logger.warning("building router artifacts from %s train into %s", records.name, router_dir)
    artifacts = build_router_artifacts(
        records,
        embedder,
        taxonomy or Taxonomy.from_names(records.categories),
        pool,
        splits=("train",),
        calibrate_on="validation",
    )
    artifacts.save(router_dir)
    return artifacts


def _taxonomy(settings: DeploymentSettings) -> Taxonomy | None:
    if settings.taxonomy:
        return load_taxonomy(settings.taxonomy)
    try:
        return load_taxonomy(default_taxonomy_path(settings.dataset or settings.name))
    except TaxonomyError:
        return None
