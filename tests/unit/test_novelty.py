"""The novelty rule: fitted on held-out categories, it flags queries of a category the
router never saw and lets through queries like the stored ones; it travels in the
router's manifest and an older manifest without it is no rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from emafusion.stores.artifacts import RouterArtifacts
from emafusion.stores.embeddings import HashEmbedder
from emafusion.stores.novelty import NoveltyRule, fit_novelty
from tests import synthetic


def _clusters(seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Three well-separated clusters of unit vectors."""
    rng = np.random.default_rng(seed)
    centres = np.eye(3, 16, dtype=np.float32) * 4.0
    vectors, labels = [], []
    for c, name in enumerate(("a", "b", "c")):
        points = centres[c] + rng.normal(0, 0.5, (60, 16)).astype(np.float32)
        vectors.append(points / np.linalg.norm(points, axis=1, keepdims=True))
        labels += [name] * 60
    return np.vstack(vectors), labels


def test_held_out_categories_set_the_threshold() -> None:
    vectors, labels = _clusters()
    rule = fit_novelty(vectors, labels)
    assert rule is not None and rule.held_out_categories == 3
    assert rule.auroc > 0.95 and rule.true_positive_rate > 0.9 and rule.false_positive_rate < 0.1
    # A query of a category the index has never seen is novel; a known kind is not.
    known = vectors[1]  # an "a" query against the other "a" queries
    assert not rule.is_novel(float(np.max(np.delete(vectors[:60], 1, axis=0) @ known)))
    unseen = vectors[150]  # a "c" query against the "a"/"b" queries only
    assert rule.is_novel(float(np.max(vectors[:120] @ unseen)))


def test_no_rule_without_two_categories_to_hold_out() -> None:
    vectors, labels = _clusters()
    assert fit_novelty(vectors[:60], labels[:60]) is None
    assert fit_novelty(vectors[:65], labels[:65]) is None  # "b" has 5: too few


def test_the_rule_travels_in_the_manifest(tmp_path: Path) -> None:
    artifacts = synthetic.make_artifacts(synthetic.make_records(), HashEmbedder())
    rule = NoveltyRule.from_json(artifacts.info.get("novelty"))
    assert rule is not None and 0 < rule.min_similarity <= 1
    artifacts.save(tmp_path / "router")
    loaded = RouterArtifacts.load(tmp_path / "router")
    assert NoveltyRule.from_json(loaded.info.get("novelty")) == rule
    assert NoveltyRule.from_json(None) is None
    for damaged in ({"min_similarity": 0.5}, "0.5", {**rule.to_json(), "auroc": "high"}):
        with pytest.raises(ValueError, match=r"ROUTER.json: 'novelty' .*Fix: rebuild"):
            NoveltyRule.from_json(damaged)


def test_a_router_with_a_damaged_rule_is_refused_naming_its_manifest(tmp_path: Path) -> None:
    from emafusion.stores.artifacts import ArtifactsError

    with pytest.raises(ArtifactsError, match=rf"{tmp_path}/ROUTER.json: 'novelty'"):
        synthetic.make_resources(info={"novelty": {"min_similarity": "low"}}, router_dir=tmp_path)
