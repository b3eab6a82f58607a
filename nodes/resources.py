"""What the nodes share: pool, chat models, embedder, memory and classifier.

Loaded once per distinct setting and reused by every run; evaluation and tests may hand
prebuilt resources in through `Context.resources` instead.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from langchain_core.language_models import BaseChatModel

from emafusion.graph.context import Context
from emafusion.stores.artifacts import (
    ArtifactsError,
    RouterArtifacts,
    build_router_artifacts,
    default_router_dir,
)
from emafusion.stores.combiner import CombinerBook, load_combiners
from emafusion.stores.embeddings import Embedder, default_embedder
from emafusion.stores.memory import OutcomeMemory
from emafusion.stores.pool import (
    ModelSpec,
    Pool,
    PoolError,
    ReplayStore,
    build_chat_model,
    load_default_pool,
    load_pool,
)
from emafusion.stores.recordings import RecordSet, load_dataset
from emafusion.stores.taxonomy import (
    CategoryClassifier,
    Taxonomy,
    TaxonomyError,
    default_taxonomy_path,
    load_taxonomy,
)
from emafusion.stores.verifier import LearnedVerifier, load_verifier

logger = logging.getLogger(__name__)


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
    # Serializes add-then-save of live outcomes (the memory itself is thread-safe).
    memory_lock: threading.Lock = field(default_factory=threading.Lock)

    def spec(self, model: str) -> ModelSpec:
        return self.pool.get(model)

    @classmethod
    def create(
        cls,
        pool: Pool,
        artifacts: RouterArtifacts,
        embedder: Embedder,
        taxonomy: Taxonomy,
        records: RecordSet | None = None,
        router_dir: Path | None = None,
        chat_models: dict[str, BaseChatModel] | None = None,
    ) -> RouterResources:
        if records is not None:
            pool.check_recordings(records)
        store = ReplayStore(records) if records is not None else None
        models = dict(chat_models or {})
        for spec in pool.models:
            models.setdefault(spec.name, build_chat_model(spec, store))
        return cls(
            pool=pool,
            chat_models=models,
            embedder=embedder,
            memory=artifacts.memory,
            classifier=artifacts.classifier,
            taxonomy=taxonomy,
            records=records,
            router_dir=router_dir,
        )


_cache: dict[tuple[object, ...], RouterResources] = {}
_cache_lock = threading.Lock()


def _key(context: Context) -> tuple[object, ...]:
    return (context.dataset, context.recordings, context.pool, context.router_dir, context.taxonomy)


def load_resources(context: Context) -> RouterResources:
    """Resources for `context`, built on first use and cached for the process."""
    if context.resources is not None:
        if not isinstance(context.resources, RouterResources):
            raise TypeError("Context.resources must be a RouterResources")
        return context.resources
    key = _key(context)
    with _cache_lock:
        if key not in _cache:
            _cache[key] = _build(context)
        return _cache[key]


def _build(context: Context) -> RouterResources:
    records: RecordSet | None = None
    if context.recordings or context.dataset:
        records = load_dataset(
            dataset=context.dataset if not context.recordings else None,
            recordings=Path(context.recordings) if context.recordings else None,
        )
    name = records.name if records is not None else "live"
    if context.pool:
        pool = load_pool(context.pool)
    elif context.dataset:
        pool = load_default_pool(context.dataset)
    else:
        raise PoolError("no pool: set Context.pool to a pool file (or Context.dataset).")
    embedder = default_embedder()
    router_dir = Path(context.router_dir) if context.router_dir else default_router_dir(name)
    taxonomy = _taxonomy(context, name)
    try:
        artifacts = RouterArtifacts.load(router_dir, embedder.id)
    except ArtifactsError as exc:
        # Only a directory with no artifacts is built anew; a corrupt or foreign one is an
        # error, so live outcomes recorded there are never silently replaced.
        if records is None:
            raise
        logger.warning("building router artifacts in %s (%s)", router_dir, exc)
        artifacts = build_router_artifacts(
            records,
            embedder,
            taxonomy or Taxonomy.from_names(records.categories),
            pool,
            splits=("train",),
            calibrate_on="validation",
        )
        artifacts.save(router_dir)
    if taxonomy is None:
        taxonomy = Taxonomy.from_names(artifacts.classifier.categories)
    resources = RouterResources.create(pool, artifacts, embedder, taxonomy, records, router_dir)
    # Absent files mean "not trained yet"; a damaged or foreign one raises, never ignored.
    resources.verifier = load_verifier(router_dir, embedder.id)
    resources.combiners = load_combiners(router_dir)
    return resources


def _taxonomy(context: Context, name: str) -> Taxonomy | None:
    if context.taxonomy:
        return load_taxonomy(context.taxonomy)
    try:
        return load_taxonomy(default_taxonomy_path(context.dataset or name))
    except TaxonomyError:
        return None
