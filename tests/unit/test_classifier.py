"""The category classifier: fit, calibrate, predict, save/load, bad input."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from emafusion.stores.artifacts import embed_records
from emafusion.stores.embeddings import HashEmbedder
from emafusion.stores.recordings import RecordSet
from emafusion.stores.taxonomy import CategoryClassifier, TaxonomyError
from tests import synthetic


@pytest.fixture
def fitted(synthetic_records: RecordSet) -> tuple[CategoryClassifier, HashEmbedder]:
    embedder = HashEmbedder()
    train = synthetic_records.split("train")
    classifier = CategoryClassifier.fit(
        list(synthetic.TOPICS),
        embed_records(train, embedder),
        [r.category for r in train],
        embedder.id,
    )
    return classifier, embedder


def _accuracy(classifier: CategoryClassifier, vectors: np.ndarray, labels: list[str]) -> float:
    probs = classifier.predict_proba(vectors)
    picked = [classifier.categories[i] for i in probs.argmax(axis=1)]
    return float(np.mean([p == t for p, t in zip(picked, labels, strict=True)]))


def test_predicts_held_out_categories_with_probabilities(
    fitted: tuple[CategoryClassifier, HashEmbedder], synthetic_records: RecordSet
) -> None:
    classifier, embedder = fitted
    test = synthetic_records.split("test")
    vectors = embed_records(test, embedder)
    probs = classifier.predict_proba(vectors)
    assert probs.shape == (len(test), 3)
    assert np.allclose(probs.sum(axis=1), 1.0) and (probs > 0).all()
    assert _accuracy(classifier, vectors, [r.category for r in test]) > 0.9
    # One vector (1-d) is a batch of one.
    assert classifier.predict_proba(vectors[0]).shape == (1, 3)


def test_calibration_lowers_held_out_log_loss(
    fitted: tuple[CategoryClassifier, HashEmbedder], synthetic_records: RecordSet
) -> None:
    classifier, embedder = fitted
    held = synthetic_records.split("validation", "test")
    vectors = embed_records(held, embedder)
    labels = [r.category for r in held]
    truth = np.array([classifier.categories.index(c) for c in labels])

    def log_loss() -> float:
        probs = classifier.predict_proba(vectors)
        return float(-np.mean(np.log(probs[np.arange(len(truth)), truth])))

    before = log_loss()
    reported = classifier.calibrate(vectors, labels)
    assert math.isclose(reported, log_loss(), rel_tol=1e-6, abs_tol=1e-9)
    assert reported <= before + 1e-12
    assert classifier.fitted_on["calibration"] == len(held)


def test_save_load_round_trip_and_damage(
    fitted: tuple[CategoryClassifier, HashEmbedder], tmp_path: Path
) -> None:
    classifier, embedder = fitted
    path = classifier.save(tmp_path / "classifier.npz")
    loaded = CategoryClassifier.load(path, embedder.id)
    probe = np.random.default_rng(0).normal(size=(5, embedder.dim)).astype(np.float32)
    probe /= np.linalg.norm(probe, axis=1, keepdims=True)
    assert np.array_equal(loaded.predict_proba(probe), classifier.predict_proba(probe))
    with pytest.raises(TaxonomyError, match="built with embedder"):
        CategoryClassifier.load(path, "another-embedder")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(TaxonomyError, match=f"{path}.*Fix"):
        CategoryClassifier.load(path)
    with pytest.raises(TaxonomyError, match="no classifier here"):
        CategoryClassifier.load(tmp_path / "missing.npz")


def test_bad_input_is_refused(fitted: tuple[CategoryClassifier, HashEmbedder]) -> None:
    classifier, embedder = fitted
    with pytest.raises(TaxonomyError, match="dimension 7 != classifier dimension"):
        classifier.predict_proba(np.zeros((1, 7), np.float32))
    with pytest.raises(TaxonomyError, match=r"labels \['astrology'\] are not categories"):
        CategoryClassifier.fit(
            ["history"], np.zeros((1, embedder.dim), np.float32), ["astrology"], embedder.id
        )
