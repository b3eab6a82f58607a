"""A router's learned artifacts: the outcome memory and the category classifier.

Both are fit on the recordings of the splits asked for (train by default); nothing reads
validation or test unless a caller names them. They live together in one directory:

    <dir>/memory/          OutcomeMemory (versioned, atomic saves)
    <dir>/classifier.npz   CategoryClassifier
    <dir>/ROUTER.json      what was built from what
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import platformdirs

from emafusion.stores.atomic import write_text_atomic
from emafusion.stores.drift import choose_half_life
from emafusion.stores.embeddings import Embedder
from emafusion.stores.memory import MemorySettings, OutcomeMemory, OutcomeRecord
from emafusion.stores.novelty import fit_novelty
from emafusion.stores.pool import Pool
from emafusion.stores.providers import recorded_call_cost
from emafusion.stores.recordings import Record, RecordSet, Split, embedding_text
from emafusion.stores.taxonomy import CategoryClassifier, Taxonomy, extend_taxonomy

ROUTER_MANIFEST = "ROUTER.json"


class ArtifactsError(ValueError):
    pass


@dataclass
class RouterArtifacts:
    memory: OutcomeMemory
    classifier: CategoryClassifier
    info: dict[str, object]

    def save(self, directory: Path | str) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.memory.save(directory / "memory")
        self.classifier.save(directory / "classifier.npz")
        manifest = json.dumps(self.info, indent=2, sort_keys=True)
        write_text_atomic(directory / ROUTER_MANIFEST, manifest)
        return directory

    @staticmethod
    def set_manifest_entry(directory: Path | str, key: str, value: object) -> Path:
        """Write one entry of an existing ROUTER.json (atomically; the rest is kept)."""
        manifest = Path(directory) / ROUTER_MANIFEST
        info = json.loads(manifest.read_text(encoding="utf-8"))
        info[key] = value
        write_text_atomic(manifest, json.dumps(info, indent=2, sort_keys=True))
        return manifest

    @classmethod
    def load(cls, directory: Path | str, embedder_id: str | None = None) -> RouterArtifacts:
        directory = Path(directory)
        manifest = directory / ROUTER_MANIFEST
        if not manifest.is_file():
            raise ArtifactsError(
                f"{directory}: no router artifacts ({ROUTER_MANIFEST} missing). Fix: build them "
                f"with `emafusion memory build --dataset NAME --out {directory}`."
            )
        try:
            info = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArtifactsError(
                f"{manifest}: unreadable ({exc}). It is written last when a router is built, so "
                f"a damaged one means the build did not finish or the file was edited. Fix: "
                f"rebuild into an empty directory (`emafusion memory build --out DIR`), or "
                f"restore the file from a backup."
            ) from None
        if not isinstance(info, dict):
            raise ArtifactsError(
                f"{manifest}: holds {type(info).__name__}, not an object. Fix: rebuild into an "
                f"empty directory (`emafusion memory build --out DIR`)."
            )
        memory = OutcomeMemory.load(directory / "memory", expected_embedder_id=embedder_id)
        classifier = CategoryClassifier.load(directory / "classifier.npz", embedder_id)
        return cls(memory, classifier, info)


def default_router_dir(name: str) -> Path:
    return Path(platformdirs.user_cache_dir("emafusion")) / "router" / name


def outcome_records(record: Record, pool: Pool | None) -> list[OutcomeRecord]:
    """A recording's outcomes as memory entries, each costed by the one cost function."""
    out = []
    for model, outcome in record.outcomes.items():
        cost: float | None = outcome.cost_usd
        if pool is not None and model in pool.names:
            _, cost, _ = recorded_call_cost(pool.get(model).prices, record.query, outcome)
        out.append(
            OutcomeRecord(model=model, score=outcome.score, source="recording", cost_usd=cost)
        )
    return out


def embed_records(records: Sequence[Record], embedder: Embedder) -> np.ndarray:
    return embedder.embed([embedding_text(r) for r in records])


def build_memory(
    records: Sequence[Record],
    vectors: np.ndarray,
    embedder: Embedder,
    pool: Pool | None,
    settings: MemorySettings | None = None,
) -> OutcomeMemory:
    memory = OutcomeMemory(embedder.dim, embedder.id, settings)
    memory.add_many(
        [r.id for r in records],
        vectors,
        [outcome_records(r, pool) for r in records],
        [r.category for r in records],
        # A recording's category is its label: a predicted category never replaces it.
        category_is_label=True,
    )
    return memory


def build_classifier(
    records: Sequence[Record], vectors: np.ndarray, embedder: Embedder, taxonomy: Taxonomy
) -> CategoryClassifier:
    """kNN over the records' labelled vectors plus the taxonomy's own descriptions/examples."""
    taxonomy = extend_taxonomy(taxonomy, [r.category for r in records])
    seeds = [(c.name, text) for c in taxonomy.categories for text in c.seed_texts]
    seed_vectors = (
        embedder.embed([t for _, t in seeds]) if seeds else np.zeros((0, embedder.dim), np.float32)
    )
    all_vectors = np.vstack([vectors, seed_vectors]).astype(np.float32)
    labels = [r.category for r in records] + [name for name, _ in seeds]
    classifier = CategoryClassifier.fit(taxonomy.names, all_vectors, labels, embedder.id)
    classifier.fitted_on = {"records": len(records), "seed_texts": len(seeds)}
    return classifier


def held_out_residuals(
    memory: OutcomeMemory, records: Sequence[Record], vectors: np.ndarray, seed: int = 0
) -> dict[str, list[float]]:
    """Per model, score minus the memory's prediction on each held-out query, in a seeded
    order (what live feedback would show, one query after another)."""
    models = memory.models
    if not models or not records:
        return {}
    batch = memory.predict_arrays(vectors, models, categories=[None] * len(records))
    order = np.random.default_rng(seed).permutation(len(records))
    out: dict[str, list[float]] = {m: [] for m in models}
    for i in order:
        for j, model in enumerate(batch.models):
            outcome = records[i].outcomes.get(model)
            if outcome is not None:
                out[model].append(float(outcome.score) - float(batch.p_success[i, j]))
    return out


def build_router_artifacts(
    records: RecordSet,
    embedder: Embedder,
    taxonomy: Taxonomy,
    pool: Pool | None,
    splits: Sequence[Split] = ("train",),
    calibrate_on: Split | None = None,
    settings: MemorySettings | None = None,
) -> RouterArtifacts:
    """Fit memory and classifier on `splits`; calibrate the classifier on `calibrate_on`."""
    if calibrate_on is not None and calibrate_on in splits:
        raise ArtifactsError(
            f"calibrating on {calibrate_on!r}, a split the classifier was fit on, would "
            f"overstate its confidence. Fix: calibrate on a held-out split."
        )
    fit_records = records.split(*splits)
    if not fit_records:
        raise ArtifactsError(f"{records.name}: no records in splits {list(splits)}.")
    vectors = embed_records(fit_records, embedder)
    memory = build_memory(fit_records, vectors, embedder, pool, settings)
    classifier = build_classifier(fit_records, vectors, embedder, taxonomy)
    info: dict[str, object] = {
        "dataset": records.name,
        "source": records.source,
        "splits": list(splits),
        "records": len(fit_records),
        "embedder_id": embedder.id,
        "models": memory.models,
        "built_at": time.time(),
    }
    novelty = fit_novelty(vectors, [r.category for r in fit_records])
    if novelty is not None:
        info["novelty"] = novelty.to_json()
    if calibrate_on is not None:
        held_out = records.split(calibrate_on)
        if held_out:
            held_vectors = embed_records(held_out, embedder)
            loss = classifier.calibrate(held_vectors, [r.category for r in held_out])
            info["classifier_calibration"] = {"split": calibrate_on, "log_loss": loss}
            info["drift"] = choose_half_life(held_out_residuals(memory, held_out, held_vectors))
    return RouterArtifacts(memory, classifier, info)
