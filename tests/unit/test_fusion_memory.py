"""The memory features of the fused confidence: how the policy reads them, that the graph
and the training traces compute the same `memory_p`, that train queries never see their own
outcome (leave-one-out is exactly a memory without them), and fusion.json's formats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from emafusion.graph import Context, make_graph
from emafusion.graph.state import AttemptView, CascadeView
from emafusion.nodes import policy
from emafusion.nodes.reliability import memory_success
from emafusion.nodes.resources import RouterResources
from emafusion.stores.fusion import (
    AGREEMENT_FEATURES,
    FEATURES,
    FORMAT_VERSION,
    FusionError,
    FusionModel,
    load_fusion,
)
from emafusion.stores.memory import MemorySettings, OutcomeMemory, OutcomeRecord
from emafusion.stores.recordings import RecordSet
from emafusion.train import fusion_traces as ft
from emafusion.train.traces import decided_events

MEMORY_P = FEATURES.index("memory_p")
MEMORY_LOG_ODDS = FEATURES.index("memory_log_odds")


def _a(
    model: str,
    key: str | None,
    reliability: float,
    memory_p: float | None = None,
    stage: int = 0,
) -> AttemptView:
    view = AttemptView(
        model=model,
        stage=stage,
        status="answered",
        confidence=None,
        cost_usd=1e-3,
        judge_cost_usd=0.0,
        judge_scores={},
        judges_failed=[],
        answer_key=key,
        reliability=reliability,
    )
    if memory_p is not None:
        view["memory_p"] = memory_p
    return view


def _view(attempts: list[AttemptView]) -> CascadeView:
    return CascadeView(attempts=attempts, next_models=[], next_cost_usd=None, n_options=4)


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


# --- the policy's features ------------------------------------------------------------------


def test_memory_p_is_the_best_memory_estimate_among_the_winning_answers() -> None:
    view = _view(
        [
            _a("a", "option:B", 0.7, memory_p=0.4),
            _a("b", "option:B", 0.7, memory_p=0.9),
            _a("c", "option:C", 0.8, memory_p=0.95),
        ]
    )
    fused = policy.fuse(view)
    assert fused is not None and fused.key == "option:B"
    assert len(fused.features) == len(FEATURES)
    # The rival's 0.95 is no evidence for B: the highest among B's answers.
    assert fused.features[MEMORY_P] == pytest.approx(_logit(0.9))
    # A rival the memory trusts lowers the memory-weighed share of B...
    weak_rival = _view([*view["attempts"][:2], _a("c", "option:C", 0.8, memory_p=0.3)])
    fused_weak = policy.fuse(weak_rival)
    assert fused_weak is not None
    assert fused_weak.features[MEMORY_LOG_ODDS] > fused.features[MEMORY_LOG_ODDS]
    # ...while the vote itself (reliabilities) and its other features are unchanged.
    assert fused_weak.key == fused.key and fused_weak.posterior == fused.posterior
    assert (
        fused_weak.features[: len(AGREEMENT_FEATURES)] == fused.features[: len(AGREEMENT_FEATURES)]
    )


def test_a_view_without_memory_p_reads_the_reliability_in_its_place() -> None:
    # Views recorded before the memory features (no memory_p) replay as if the memory
    # agreed with the reliability table.
    old = policy.fuse(_view([_a("a", "option:B", 0.7), _a("b", "option:C", 0.6)]))
    same = policy.fuse(
        _view([_a("a", "option:B", 0.7, memory_p=0.7), _a("b", "option:C", 0.6, memory_p=0.6)])
    )
    assert old is not None and same is not None and old.features == same.features
    assert old.features[MEMORY_P] == pytest.approx(_logit(0.7))
    assert old.features[MEMORY_LOG_ODDS] == pytest.approx(_logit(old.posterior))


def test_the_calibrator_reads_the_memory_features() -> None:
    coef = [0.0] * len(FEATURES)
    coef[MEMORY_P] = 1.0
    model = FusionModel(coef=tuple(coef))
    sure = policy.fuse(_view([_a("a", "option:B", 0.7, memory_p=0.95)]), model)
    unsure = policy.fuse(_view([_a("a", "option:B", 0.7, memory_p=0.2)]), model)
    assert sure is not None and unsure is not None
    assert sure.posterior == unsure.posterior
    assert sure.confidence == pytest.approx(0.95) and unsure.confidence == pytest.approx(0.2)


# --- fusion.json ------------------------------------------------------------------------------


def test_fusion_json_round_trips_with_the_memory_features(tmp_path: Path) -> None:
    model = FusionModel(coef=tuple(float(i) for i in range(len(FEATURES))), intercept=-1.0)
    model.save(tmp_path)
    data = json.loads((tmp_path / "fusion.json").read_text())
    assert data["format_version"] == FORMAT_VERSION == 2
    assert data["features"] == list(FEATURES)
    loaded = load_fusion(tmp_path)
    assert loaded is not None and loaded.coef == model.coef and loaded.intercept == -1.0


def test_a_format_1_calibrator_loads_with_no_weight_on_the_memory_features(
    tmp_path: Path,
) -> None:
    old = {
        "format_version": 1,
        "smoothing": 10.0,
        "open_options": 20,
        "semantic_threshold": 0.9,
        "features": list(AGREEMENT_FEATURES),
        "coef": [0.5, 0.1, -0.2, -0.3, 0.4, -0.05],
        "intercept": 0.25,
        "info": {},
    }
    (tmp_path / "fusion.json").write_text(json.dumps(old))
    loaded = load_fusion(tmp_path)
    assert loaded is not None
    assert loaded.coef == (*old["coef"], 0.0, 0.0)
    # Its confidences are the old calibrator's, whatever the memory says.
    view = _view([_a("a", "option:B", 0.7, memory_p=0.99), _a("b", "option:C", 0.6)])
    fused = policy.fuse(view, loaded)
    assert fused is not None
    z = old["intercept"] + sum(
        c * x for c, x in zip(old["coef"], fused.features[: len(AGREEMENT_FEATURES)], strict=True)
    )
    assert fused.confidence == pytest.approx(1 / (1 + np.exp(-z)))
    # A format-1 file without a feature list was fitted on the agreement features.
    del old["features"]
    (tmp_path / "fusion.json").write_text(json.dumps(old))
    again = load_fusion(tmp_path)
    assert again is not None and again.coef == loaded.coef


@pytest.mark.parametrize(
    "change, message",
    [
        ({"format_version": 3}, "format 1 or 2"),
        ({"features": ["log_odds", "mystery"]}, "fitted on features"),
        ({"features": ["log_odds", "log_odds"]}, "fitted on features"),
        ({"coef": [1.0, 2.0]}, "invalid field"),
    ],
)
def test_a_fusion_json_this_version_cannot_read_says_so(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    FusionModel(coef=(0.1,) * len(FEATURES)).save(tmp_path)
    data = json.loads((tmp_path / "fusion.json").read_text())
    (tmp_path / "fusion.json").write_text(json.dumps({**data, **change}))
    with pytest.raises(FusionError, match=message) as raised:
        load_fusion(tmp_path)
    assert "emafusion eval" in str(raised.value)


# --- leave-one-out on train -------------------------------------------------------------------


def _world(
    n: int = 60, seed: int = 3
) -> tuple[list[str], np.ndarray, list[dict[str, float]], list[str]]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, 16))
    labels = [("x", "y", "z")[i % 3] for i in range(n)]
    vectors = np.stack([centres[i % 3] + 0.6 * rng.normal(size=16) for i in range(n)]).astype(
        np.float32
    )
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = [
        {m: float(rng.random() < p) for m, p in (("a", 0.3 + 0.2 * (i % 3)), ("b", 0.7))}
        for i in range(n)
    ]
    # Model "c" is recorded on a few queries only: its category priors fall back.
    for i in range(0, n, 9):
        scores[i]["c"] = float(rng.random() < 0.5)
    return [f"q{i}" for i in range(n)], vectors, scores, labels


def _memory(
    ids: list[str],
    vectors: np.ndarray,
    scores: list[dict[str, float]],
    labels: list[str],
    keep: list[int],
    **settings: Any,
) -> OutcomeMemory:
    memory = OutcomeMemory(vectors.shape[1], "test-embedder", MemorySettings(**settings))
    memory.add_many(
        [ids[i] for i in keep],
        vectors[keep],
        [
            [OutcomeRecord(model=m, score=s, source="recording") for m, s in scores[i].items()]
            for i in keep
        ],
        [labels[i] for i in keep],
        category_is_label=True,
    )
    return memory


@pytest.mark.parametrize("settings", [{}, {"shrinkage": 8.0, "min_category_count": 20}])
def test_leave_one_out_is_exactly_a_memory_that_never_saw_the_query(
    settings: dict[str, Any],
) -> None:
    ids, vectors, scores, labels = _world()
    everyone = list(range(len(ids)))
    memory = _memory(ids, vectors, scores, labels, everyone, **settings)
    models = ["a", "b", "c", "unseen"]
    # The category each query is asked with: its own label, another one, or none.
    asked = [(labels[i], labels[(i + 1) % len(ids)], None)[i % 3] for i in everyone]
    loo = ft.loo_memory_success(memory, vectors, ids, models, 8, asked)
    for i in range(0, len(ids), 4):
        without = _memory(ids, vectors, scores, labels, [j for j in everyone if j != i], **settings)
        expected = memory_success(without, vectors[i], models, 8, asked[i])
        assert loo[i] == pytest.approx(expected, abs=1e-6), i
        # The plain prediction does see the query's own outcomes.
        plain = memory_success(memory, vectors[i], models, 8, asked[i])
        assert plain != pytest.approx(expected, abs=1e-6)


def test_a_train_query_never_sees_its_own_outcome() -> None:
    ids, vectors, scores, labels = _world()
    everyone = list(range(len(ids)))
    flipped = [dict(s) for s in scores]
    flipped[5] = {m: 1.0 - s for m, s in scores[5].items()}
    asked: list[str | None] = [labels[5]] * len(ids)
    before = ft.loo_memory_success(
        _memory(ids, vectors, scores, labels, everyone), vectors, ids, ["a", "b"], 8, asked
    )
    after = ft.loo_memory_success(
        _memory(ids, vectors, flipped, labels, everyone), vectors, ids, ["a", "b"], 8, asked
    )
    assert before[5] == pytest.approx(after[5], abs=1e-12)
    # Its neighbours do see it.
    assert any(before[i] != pytest.approx(after[i]) for i in everyone if i != 5)


def test_leave_one_out_refuses_judged_outcomes_in_the_priors() -> None:
    ids, vectors, scores, labels = _world(12)
    memory = _memory(ids, vectors, scores, labels, list(range(12)), judged_weight=0.5)
    with pytest.raises(ValueError, match="judged_weight 0"):
        ft.loo_memory_success(memory, vectors, ids, ["a"], 4, [None] * 12)


# --- graph == training traces ---------------------------------------------------------------

PLAN = {"*": [["tiny", "small"], ["mid"], ["large"]]}
TAXONOMY_THRESHOLD = 0.8


async def test_the_graph_records_the_memory_p_the_training_traces_compute(
    tiny_resources: RouterResources, synthetic_records: RecordSet
) -> None:
    """The presets' way through the graph (a fixed plan, the vote, no judges) records, at
    every stage, the very views `plan_views` builds from `query_signals`: memory_p too."""
    graph = make_graph(tiny_resources)
    records = synthetic_records.split("test")[:12]
    context = Context(
        stages=PLAN,
        fusion="vote",
        judges=[],
        stop_early=False,
        max_levels=8,
        taxonomy_threshold=TAXONOMY_THRESHOLD,
        record_outcomes=False,
    )
    signals = ft.query_signals(
        records,
        ft.routing_vectors(records, tiny_resources),
        tiny_resources,
        tiny_resources.classifier,
        tiny_resources.reliability_table(policy.DEFAULT_FUSION.smoothing),
        taxonomy_threshold=TAXONOMY_THRESHOLD,
        k=context.k,
    )
    compared = 0
    for record, sig in zip(records, signals, strict=True):
        result = await graph.ainvoke(
            {"query": record.query, "record_id": record.id}, context=context
        )
        live = [e["view"] for e in decided_events(result["trace"])]
        built = ft.plan_views(sig, PLAN, tiny_resources, TAXONOMY_THRESHOLD)
        assert len(live) == len(built)
        for a, b in zip(live, built, strict=True):
            fields = ("model", "stage", "status", "answer_key", "reliability", "memory_p")
            assert [[x[f] for f in fields] for x in a["attempts"]] == [
                [x[f] for f in fields] for x in b["attempts"]
            ]
            assert all(
                x["memory_p"] is not None for x in a["attempts"] if x["status"] == "answered"
            )
            assert policy.fuse(a) == policy.fuse(b)
            compared += 1
    assert compared == 3 * len(records)


# --- which features the calibrator keeps ---------------------------------------------------


def _calibrate_on(monkeypatch: pytest.MonkeyPatch, informative: bool, n: int = 3000) -> FusionModel:
    """The calibrator fitted on synthetic rows where the memory features carry the label
    (`informative`) or are noise."""
    from types import SimpleNamespace

    from emafusion.train import fusion

    rng = np.random.default_rng(7)
    x = rng.normal(size=(n, len(FEATURES)))
    signal = x[:, 0] + (2.0 * x[:, MEMORY_P] if informative else 0.0)
    y = rng.random(n) < 1 / (1 + np.exp(-signal))
    folds = rng.integers(0, fusion.FEATURE_FOLDS, size=n)
    monkeypatch.setattr(
        fusion, "calibration_rows_by_query", lambda traces, n_folds=0: (x, y, folds, [])
    )
    return fusion.fit_calibrator(SimpleNamespace(model=FusionModel()))  # type: ignore[arg-type]


def test_the_memory_features_are_kept_where_they_separate_on_held_out_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = _calibrate_on(monkeypatch, informative=True)
    assert model.info["calibrator"]["features"] == "agreement + memory"
    assert model.coef[MEMORY_P] > 1.0
    losses = model.info["calibrator"]["held_out_log_loss"]
    assert losses["agreement + memory"] < losses["agreement"]


def test_memory_features_that_do_not_help_weigh_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _calibrate_on(monkeypatch, informative=False)
    assert model.info["calibrator"]["features"] == "agreement"
    assert model.coef[MEMORY_P] == model.coef[MEMORY_LOG_ODDS] == 0.0
    assert model.coef[0] > 0.5
