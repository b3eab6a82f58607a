"""The learned verifier: exported trees, no label leakage, persistence, and the judge."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from threadpoolctl import threadpool_limits

from emafusion.graph import Context, make_graph
from emafusion.graph.state import JudgeTask
from emafusion.nodes.judges import get_judge
from emafusion.nodes.resources import RouterResources
from emafusion.stores.answers import option_count
from emafusion.stores.artifacts import build_router_artifacts, embed_records
from emafusion.stores.embeddings import Embedder
from emafusion.stores.memory import OutcomeMemory
from emafusion.stores.metrics import auroc
from emafusion.stores.pool import load_default_pool
from emafusion.stores.recordings import RecordSet, routing_text
from emafusion.stores.taxonomy import default_taxonomy_path, load_taxonomy
from emafusion.stores.verifier import (
    TEXT_FEATURES,
    LearnedVerifier,
    Pairs,
    VerifierError,
    load_verifier,
    record_pairs,
    text_features,
)
from emafusion.train.traces import decided_events
from emafusion.train.verifier import VerifierSettings, export_trees, train_verifier

FAST = VerifierSettings(max_iter=80, learning_rate=0.1)


@pytest.fixture(scope="module")
def slice_memory(routerbench_slice: RecordSet, embedder: Embedder) -> OutcomeMemory:
    taxonomy = load_taxonomy(default_taxonomy_path("routerbench"))
    pool = load_default_pool("routerbench")
    return build_router_artifacts(routerbench_slice, embedder, taxonomy, pool).memory


@pytest.fixture(scope="module")
def verifier(
    routerbench_slice: RecordSet, slice_memory: OutcomeMemory, embedder: Embedder
) -> LearnedVerifier:
    records = routerbench_slice.records
    vectors = embed_records(records, embedder)
    return train_verifier(records, vectors, slice_memory, embedder.id, FAST)


def test_exported_trees_predict_exactly_like_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 6))
    x[rng.random(x.shape) < 0.1] = np.nan  # missing values take the learned side
    y = (np.nan_to_num(x[:, 0]) + 0.5 * np.nan_to_num(x[:, 1]) ** 2 + rng.normal(0, 0.5, 3000)) > 0
    # One OpenMP thread, as train_verifier fits: spinning threads crawl on a busy machine.
    with threadpool_limits(limits=1, user_api="openmp"):
        classifier = HistGradientBoostingClassifier(max_iter=40, random_state=0).fit(x, y)
    trees = export_trees(classifier)
    fresh = rng.normal(size=(500, 6))
    fresh[rng.random(fresh.shape) < 0.1] = np.nan
    assert np.allclose(trees.raw(fresh), classifier.decision_function(fresh), atol=1e-10)


def test_text_features_on_hand_made_answers() -> None:
    query = "Which is a gas?\nA. iron\nB. helium\nC. salt"
    parsed = dict(
        zip(TEXT_FEATURES, text_features(query, "Let's see. The answer is (B)."), strict=True)
    )
    assert parsed["final_answer_parsed"] == 1.0 and parsed["chosen_option"] == 1.0
    assert parsed["n_options"] == 3.0 and parsed["says_answer_is"] == 1.0
    vague = dict(zip(TEXT_FEATURES, text_features(query, "It might be A or maybe C."), strict=True))
    assert vague["final_answer_parsed"] == 0.0 and vague["chosen_option"] == -1.0
    assert vague["hedges"] == 2.0
    empty = dict(zip(TEXT_FEATURES, text_features("Explain gravity.", "  "), strict=True))
    assert empty["response_empty"] == 1.0 and empty["final_answer_parsed"] == 0.0


def test_option_count_on_the_recordings(routerbench: RecordSet) -> None:
    # Winogrande asks A or B; ARC has three to five options; the worked examples before
    # the question never count.
    counts: dict[str, set[int]] = {"winogrande": set(), "arc-challenge": set()}
    for record in routerbench.records:
        counts[record.category].add(option_count(record.query))
    assert counts["winogrande"] == {2}
    assert counts["arc-challenge"] <= {3, 4, 5} and 4 in counts["arc-challenge"]
    assert option_count("Q?\nA. x\nC. y") == 0  # letters must run A, B, ...


def test_training_rows_leave_their_own_query_out(
    routerbench_slice: RecordSet,
    slice_memory: OutcomeMemory,
    verifier: LearnedVerifier,
    embedder: Embedder,
    routerbench: RecordSet,
) -> None:
    """With its own outcome among the neighbours, the memory looks far better than it is."""
    train = routerbench_slice.records
    vectors = embed_records(train, embedder)
    pairs = record_pairs(train, verifier.models)
    assert pairs.labels is not None
    ids = [r.id for r in train]
    leaky = verifier.features(slice_memory, vectors, pairs)[:, 0]
    honest = verifier.features(slice_memory, vectors, pairs, exclude_ids=ids)[:, 0]
    held_out = routerbench.split("validation")
    held_pairs = record_pairs(held_out, verifier.models)
    assert held_pairs.labels is not None
    unseen = verifier.features(slice_memory, embed_records(held_out, embedder), held_pairs)[:, 0]
    unseen_auroc = auroc(unseen, held_pairs.labels)
    assert auroc(leaky, pairs.labels) > unseen_auroc + 0.1
    assert abs(auroc(honest, pairs.labels) - unseen_auroc) < 0.05
    # train_verifier records the honest (leave-one-out) figure it trained on.
    assert verifier.info["train_auroc_prior_leave_one_out"] == pytest.approx(
        auroc(honest, pairs.labels)
    )


def test_verifier_beats_chance_and_the_prior_on_held_out_queries(
    verifier: LearnedVerifier,
    slice_memory: OutcomeMemory,
    routerbench: RecordSet,
    embedder: Embedder,
) -> None:
    held_out = routerbench.split("validation")
    pairs = record_pairs(held_out, verifier.models)
    assert pairs.labels is not None
    features = verifier.features(slice_memory, embed_records(held_out, embedder), pairs)
    score = verifier.predict(features)
    assert ((score > 0) & (score < 1)).all()
    assert auroc(score, pairs.labels) > 0.65
    assert auroc(score, pairs.labels) > auroc(features[:, 0], pairs.labels)


def test_save_load_roundtrip_and_damage(
    verifier: LearnedVerifier, tmp_path: Path, embedder: Embedder
) -> None:
    assert load_verifier(tmp_path) is None
    verifier.save(tmp_path)
    loaded = load_verifier(tmp_path, embedder.id)
    assert loaded is not None
    x = np.random.default_rng(1).normal(size=(50, len(verifier.space.feature_names)))
    assert np.array_equal(loaded.predict(x), verifier.predict(x))
    with pytest.raises(VerifierError, match="trained on embeddings of.*judges train"):
        LearnedVerifier.load(tmp_path, "some-other-embedder")
    damaged = tmp_path / "damaged"
    shutil.copytree(tmp_path, damaged, ignore=shutil.ignore_patterns("damaged"))
    blob = bytearray((damaged / "verifier.npz").read_bytes())
    blob[-100] ^= 0xFF
    (damaged / "verifier.npz").write_bytes(bytes(blob))
    with pytest.raises(VerifierError, match="sha256.*Fix: retrain"):
        load_verifier(damaged)


def test_unknown_models_and_wrong_vectors_are_refused(
    verifier: LearnedVerifier, slice_memory: OutcomeMemory
) -> None:
    pairs = Pairs(np.zeros(1, np.int64), ["q"], ["not-a-model"], ["a"])
    with pytest.raises(VerifierError, match="not trained on"):
        verifier.features(slice_memory, np.zeros((1, verifier.space.projection.shape[1])), pairs)
    known = Pairs(np.zeros(1, np.int64), ["q"], [verifier.models[0]], ["a"])
    with pytest.raises(VerifierError, match="dimensions"):
        verifier.features(slice_memory, np.zeros((1, 7)), known)


async def test_verifier_judge_in_the_graph(
    make_resources: Callable[..., RouterResources],
    verifier: LearnedVerifier,
    routerbench: RecordSet,
) -> None:
    resources = make_resources()
    judge = get_judge("verifier")
    task = JudgeTask(
        judge="verifier",
        attempt=0,
        query="q",
        record_id=None,
        category=None,
        model=verifier.models[0],
        answer="A",
        p_success=0.5,
        earlier_answers=[],
    )
    untrained = await judge.score(task, resources, Context())
    assert untrained.score is None and "judges train" in untrained.detail
    resources.verifier = verifier
    stranger = await judge.score({**task, "model": "someone-else"}, resources, Context())  # type: ignore[typeddict-item]
    assert stranger.score is None

    record = routerbench.split("test")[0]
    context = Context(record_outcomes=False, judges=("verifier",))
    result = await make_graph(resources).ainvoke(
        {"query": record.query, "record_id": record.id}, context=context
    )
    decided = decided_events(result["trace"])
    assert decided
    first = decided[0]
    # The judge used the query vector classify computed, and the memory the graph uses.
    vector = resources.embedder.embed([routing_text(record.query)])
    answer = record.outcomes[first["model"]].response or ""
    pairs = Pairs(np.zeros(1, np.int64), [record.query], [first["model"]], [answer])
    expected = float(verifier.score(resources.memory, vector, pairs)[0])
    assert first["view"]["attempts"][0]["judge_scores"]["verifier"] == pytest.approx(
        expected, abs=1e-5
    )
    assert first["confidence"] == pytest.approx(expected, abs=1e-5)
