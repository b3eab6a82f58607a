"""Judged outcomes: what the run believes of each answer, what that is worth (measured on
held-out labels), and what `record` stores, through the real graph on the synthetic world."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from emafusion.graph import Context, make_graph
from emafusion.graph.state import AttemptView, CascadeView
from emafusion.nodes import policy
from emafusion.nodes.policy import PolicySettings
from emafusion.nodes.resources import RouterResources
from emafusion.stores.artifacts import ArtifactsError
from emafusion.stores.embeddings import HashEmbedder
from emafusion.stores.judged import JudgedEvidence, judging_key
from emafusion.train.judged_evidence import BeliefRows, measure, measure_router
from tests import synthetic


def _answer(model: str, key: str | None, reliability: float, confidence: float) -> AttemptView:
    return AttemptView(
        model=model,
        stage=0,
        answer_key=key,
        reliability=reliability,
        status="answered",
        confidence=confidence,
        cost_usd=1e-3,
        judge_cost_usd=0.0,
        judge_scores={"memory_prior": confidence},
        judges_failed=[],
    )


def _view(answers: list[AttemptView]) -> CascadeView:
    return CascadeView(attempts=answers, next_models=[], next_cost_usd=None, n_options=4)


def test_last_believes_each_answer_its_judges_confidence() -> None:
    view = _view([_answer("a", "A", 0.7, 0.4), _answer("b", "B", 0.7, 0.9)])
    beliefs = policy.answer_beliefs(view, PolicySettings(threshold=0.5, max_levels=3))
    assert beliefs == [0.4, 0.9]


def test_vote_believes_the_majority_and_doubts_the_dissenter() -> None:
    view = _view(
        [_answer("a", "A", 0.7, 0.5), _answer("b", "A", 0.7, 0.5), _answer("c", "B", 0.7, 0.5)]
    )
    rule = PolicySettings(threshold=0.5, max_levels=3, fusion="vote")
    beliefs = policy.answer_beliefs(view, rule)
    fused = policy.fuse(view)
    assert fused is not None and fused.key == "A"
    assert beliefs[0] == beliefs[1] == pytest.approx(fused.confidence)
    assert beliefs[2] is not None and beliefs[2] < 1.0 - fused.confidence
    # What is left of the top key's belief is shared by the others, never more.
    assert beliefs[0] + beliefs[2] <= 1.0 + 1e-9


def _rows(beliefs: np.ndarray, memory: np.ndarray, labels: np.ndarray) -> BeliefRows:
    ids = [f"q{i}" for i in range(len(labels))]
    return BeliefRows(ids, ["m"] * len(labels), beliefs, memory, labels)


def test_a_belief_that_knows_more_than_the_memory_earns_weight_and_a_copy_earns_none() -> None:
    rng = np.random.default_rng(0)
    truth = rng.uniform(0.1, 0.9, 2000)  # each answer's real chance of being right
    labels = (rng.uniform(size=2000) < truth).astype(float)
    memory = np.full(2000, truth.mean())  # knows only the base rate
    informed = measure(_rows(truth, memory, labels), Context(), "validation")
    assert 0.05 < informed.weight < 1.0
    assert informed.brier_belief < informed.brier_memory
    # The memory's own prediction, however (mis)calibrated, is worth nothing.
    copy = measure(_rows(memory * 0.5 + 0.45, memory, labels), Context(), "validation")
    assert copy.weight == 0.0
    # A belief that reads the label is worth (nearly) a label.
    oracle = measure(_rows(labels * 0.98 + 0.01, memory, labels), Context(), "validation")
    assert oracle.weight > 0.9
    # The drift test's baseline: each model's residuals in these runs, labels and beliefs.
    mean, sd = informed.baseline["truth"]["m"]
    assert mean == pytest.approx(float(np.mean(labels - memory))) and sd > 0
    assert set(informed.baseline) == {"truth", "judged"}


def test_too_few_answers_measure_nothing() -> None:
    rows = _rows(np.array([0.9, 0.1]), np.array([0.5, 0.5]), np.array([1.0, 0.0]))
    assert measure(rows, Context(), "validation").weight == 0.0


def test_the_measurement_round_trips_and_a_damaged_one_is_a_clear_error() -> None:
    evidence = JudgedEvidence(
        judging_key(Context()),
        0.25,
        1.5,
        -0.2,
        0.18,
        0.2,
        500,
        "validation",
        baseline={"truth": {"a": (0.1, 0.4)}, "judged": {"a": (-0.05, 0.2)}},
    )
    assert JudgedEvidence.from_json(evidence.to_json()) == evidence
    assert JudgedEvidence.from_json(None) is None
    for damaged in (
        {**evidence.to_json(), "weight": 1.5},
        {**evidence.to_json(), "baseline": {"truth": {"a": [0.1]}}},
        {"weight": 0.2},
        [1],
    ):
        with pytest.raises(ValueError, match="'judged'.*Fix: measure it again"):
            JudgedEvidence.from_json(damaged)


def _resources_with(evidence: JudgedEvidence | None) -> RouterResources:
    info = {} if evidence is None else {"judged": evidence.to_json()}
    return synthetic.make_resources(info=info)


def test_the_router_directory_s_measurement_sets_the_memory_s_judged_weight() -> None:
    evidence = JudgedEvidence(judging_key(Context()), 0.3, 1.0, 0.0, 0.18, 0.2, 500, "validation")
    assert _resources_with(evidence).memory.settings.judged_weight == 0.3
    assert _resources_with(None).memory.settings.judged_weight == 0.0
    with pytest.raises(ArtifactsError, match="router/.*'judged'"):
        synthetic.make_resources(info={"judged": {"weight": "much"}}, router_dir=Path("router"))


async def _recorded_score(
    resources: RouterResources, context: Context
) -> tuple[float | None, dict[str, Any]]:
    record = synthetic.make_records().split("test")[3]
    result = await make_graph(resources).ainvoke(
        {"query": record.query, "record_id": record.id}, context=context
    )
    assert resources.flush_records()
    stored = resources.memory.get(record.id)
    score = None if stored is None else stored.outcomes[result["model"]].score
    return score, result


def _belief_of(result: dict[str, Any], model: str) -> float:
    returned = [e["data"] for e in result["trace"] if e["event"] == "returned"][-1]
    return next(b["belief"] for b in returned["beliefs"] if b["model"] == model)


async def test_record_stores_the_calibrated_belief_only_for_the_judging_measured() -> None:
    context = Context(record_outcomes=True)
    evidence = JudgedEvidence(judging_key(context), 0.3, 0.5, -1.0, 0.18, 0.2, 500, "validation")
    score, result = await _recorded_score(_resources_with(evidence), context)
    belief = _belief_of(result, result["model"])
    assert score == pytest.approx(evidence.calibrated(belief)) and score != pytest.approx(belief)
    # Judged another way than measured: its weight is unknown, so nothing is stored.
    other = context.replace(judges=("answer_format",))
    score, _ = await _recorded_score(_resources_with(evidence), other)
    assert score is None
    # Never measured: stored as believed (and counted for nothing).
    score, result = await _recorded_score(_resources_with(None), context)
    assert score == pytest.approx(_belief_of(result, result["model"]))


async def test_measuring_on_validation_runs_the_graph_and_sets_the_weight() -> None:
    resources = _resources_with(None)
    records = synthetic.make_records()
    held_out = records.split("validation", "test")
    evidence = await measure_router(resources, held_out, Context(), "held out")
    assert evidence.answers >= len(held_out) and evidence.split == "held out"
    assert evidence.matches(Context()) and not evidence.matches(Context(fusion="vote"))
    assert resources.judged == evidence
    assert resources.memory.settings.judged_weight == evidence.weight
    assert len(resources.memory) == len(records.split("train"))  # nothing was recorded
    with pytest.raises(ValueError, match="memory holds"):
        await measure_router(resources, records.split("train"), Context(), "train")


def test_weigh_judged_is_validated() -> None:
    resources = _resources_with(None)
    with pytest.raises(ValueError, match="judged_weight"):
        resources.memory.weigh_judged(1.5)
    assert replace(resources.memory.settings).judged_weight == 0.0


def test_the_cli_measures_on_build_and_on_demand(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from emafusion.cli.main import main
    from emafusion.nodes import resources as resources_module
    from emafusion.stores import embeddings

    monkeypatch.setattr(resources_module, "default_embedder", lambda: HashEmbedder())
    monkeypatch.setattr(embeddings, "default_embedder", lambda: HashEmbedder())
    records = synthetic.make_records()
    recordings, pool = synthetic.write_deployment_files(tmp_path, records)
    router = tmp_path / "router"
    source = ["--recordings", str(recordings), "--pool", str(pool)]
    build = ["memory", "build", *source, "--calibrate-on", "validation", "--out", str(router)]
    assert main(build) == 0
    assert "judged outcomes count" in capsys.readouterr().out
    stored = json.loads((router / "ROUTER.json").read_text())["judged"]
    assert JudgedEvidence.from_json(stored) is not None and stored["split"] == "validation"
    (router / "ROUTER.json").write_text(
        json.dumps({**json.loads((router / "ROUTER.json").read_text()), "judged": None})
    )
    assert main(["judges", "evidence", *source, "--router-dir", str(router)]) == 0
    assert "written to" in capsys.readouterr().out
    again = json.loads((router / "ROUTER.json").read_text())["judged"]
    assert again["judging"] == judging_key(Context())
