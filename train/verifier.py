"""Training the learned verifier (scikit-learn, imported here only) on the train split's
recorded outcomes; `emafusion.stores.verifier` scores with the exported trees.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from emafusion.stores.memory import OutcomeMemory
from emafusion.stores.metrics import auroc
from emafusion.stores.recordings import Record
from emafusion.stores.verifier import (
    FeatureSpace,
    LearnedVerifier,
    TreeEnsemble,
    VerifierError,
    record_pairs,
)


def export_trees(classifier: Any) -> TreeEnsemble:
    """Flat arrays of a fitted binary `HistGradientBoostingClassifier` (numeric features)."""
    predictors = classifier._predictors
    if any(len(per_iteration) != 1 for per_iteration in predictors):
        raise VerifierError("expected one tree per boosting iteration (a binary classifier)")
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("f", "t", "l", "r", "leaf", "m", "v")}
    roots, offset, depth = [], 0, 0
    for (tree,) in predictors:
        nodes = tree.nodes
        if nodes["is_categorical"].any():
            raise VerifierError("categorical splits cannot be exported; use numeric features")
        roots.append(offset)
        parts["f"].append(nodes["feature_idx"].astype(np.int64))
        parts["t"].append(nodes["num_threshold"].astype(np.float64))
        parts["l"].append(nodes["left"].astype(np.int64) + offset)
        parts["r"].append(nodes["right"].astype(np.int64) + offset)
        parts["leaf"].append(nodes["is_leaf"].astype(bool))
        parts["m"].append(nodes["missing_go_to_left"].astype(bool))
        parts["v"].append(nodes["value"].astype(np.float64))
        depth = max(depth, int(nodes["depth"].max()))
        offset += len(nodes)

    def cat(key: str, dtype: type) -> np.ndarray:
        return np.concatenate(parts[key]) if parts[key] else np.zeros(0, dtype)

    return TreeEnsemble(
        feature=cat("f", np.int64),
        threshold=cat("t", np.float64),
        left=cat("l", np.int64),
        right=cat("r", np.int64),
        is_leaf=cat("leaf", bool),
        missing_left=cat("m", bool),
        value=cat("v", np.float64),
        roots=np.asarray(roots, dtype=np.int64),
        baseline=float(np.ravel(classifier._baseline_prediction)[0]),
        max_depth=depth,
    )


@dataclass(frozen=True)
class VerifierSettings:
    k: int = 32
    components: int = 16
    max_iter: int = 300
    learning_rate: float = 0.05
    max_leaf_nodes: int = 31
    min_samples_leaf: int = 40
    l2_regularization: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("k", "max_iter", "max_leaf_nodes", "min_samples_leaf"):
            if getattr(self, name) < 1:
                raise VerifierError(f"VerifierSettings.{name} must be >= 1")
        if self.components < 0:
            raise VerifierError("VerifierSettings.components must be >= 0")


def _principal_components(vectors: np.ndarray, components: int) -> tuple[np.ndarray, np.ndarray]:
    mean = vectors.mean(axis=0).astype(np.float64)
    if components == 0:
        return mean, np.zeros((0, vectors.shape[1]))
    _, _, vt = np.linalg.svd(vectors.astype(np.float64) - mean, full_matrices=False)
    return mean, vt[: min(components, len(vt))]


def train_verifier(
    records: Sequence[Record],
    vectors: np.ndarray,
    memory: OutcomeMemory,
    embedder_id: str,
    settings: VerifierSettings | None = None,
) -> LearnedVerifier:
    """Fit the verifier on the recorded outcomes of `records` (the memory's own split).

    `vectors` are the records' query embeddings, in order. Memory features leave each
    record's own query out, so the labels never leak through the neighbours.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_limits

    settings = settings or VerifierSettings()
    vectors = np.asarray(vectors, dtype=np.float32)
    if len(records) != len(vectors):
        raise VerifierError(f"{len(records)} records but {len(vectors)} vectors; pass one each")
    models = tuple(m for m in memory.models if any(m in r.outcomes for r in records))
    pairs = record_pairs(records, models)
    if pairs.labels is None or len(pairs) < 50 or pairs.labels.all() or not pairs.labels.any():
        raise VerifierError(
            f"need at least 50 recorded outcomes with both right and wrong answers to train "
            f"a verifier, got {len(pairs)}. Fix: train on a larger split."
        )
    mean, projection = _principal_components(vectors, settings.components)
    space = FeatureSpace(models, settings.k, embedder_id, mean, projection)
    started = time.perf_counter()
    features = space.features(memory, vectors, pairs, exclude_ids=[r.id for r in records])
    # One OpenMP thread: on a machine shared with other work, libgomp's spinning threads
    # slowed this fit from 15 s to minutes; alone on two cores one thread costs ~1.5x.
    with threadpool_limits(limits=1, user_api="openmp"):
        classifier = HistGradientBoostingClassifier(
            max_iter=settings.max_iter,
            learning_rate=settings.learning_rate,
            max_leaf_nodes=settings.max_leaf_nodes,
            min_samples_leaf=settings.min_samples_leaf,
            l2_regularization=settings.l2_regularization,
            early_stopping=True,
            validation_fraction=0.1,
            n_iter_no_change=20,
            random_state=settings.seed,
        ).fit(features, pairs.labels)
    trees = export_trees(classifier)
    sample = features[:: max(1, len(features) // 2000)]
    exported = trees.raw(sample)
    reference = classifier.decision_function(sample)
    if not np.allclose(exported, reference, atol=1e-8):
        # Guards against a scikit-learn release that changes its private tree layout.
        raise VerifierError(
            f"exported trees disagree with scikit-learn (max diff "
            f"{np.abs(exported - reference).max():.2e}). Fix: pin scikit-learn to a version "
            f"this emafusion supports."
        )
    prior_auroc = auroc(features[:, 0], pairs.labels)
    info = {
        "trained_on": {"records": len(records), "pairs": len(pairs)},
        "iterations": int(classifier.n_iter_),
        "fit_seconds": round(time.perf_counter() - started, 2),
        "train_auroc_prior_leave_one_out": prior_auroc,
        "settings": settings.__dict__,
    }
    return LearnedVerifier(space, trees, info)
