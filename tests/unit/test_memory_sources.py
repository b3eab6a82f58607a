"""Outcome sources kept apart: ground truth vs judged, labels vs predicted categories, and
predictions that follow the documented formula."""

from __future__ import annotations

import io
import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from emafusion.stores.memory import MANIFEST_FILE, MemorySettings, OutcomeMemory
from tests.unit.memory_helpers import DIM, EMBEDDER, E, memory, random_units, rec, unit


def test_judged_outcome_never_overwrites_ground_truth(tmp_path: Path) -> None:
    mem = memory()
    mem.add("q", E[0], [rec("a", 1.0, timestamp=10.0)])
    mem.add("q", None, [rec("a", 0.0, source="live_judged", timestamp=20.0)])
    mem.add("q", None, [rec("b", 0.3, source="live_judged", timestamp=20.0)])
    for loaded in (mem, _round_trip(mem, tmp_path)):
        stored = loaded.get("q")
        assert stored is not None
        assert stored.ground_truth["a"].score == 1.0
        assert stored.judged["a"].score == 0.0 and stored.judged["a"].source == "live_judged"
        assert stored.outcomes["a"].source == "recording"  # what predictions use
        assert stored.outcomes["b"].source == "live_judged"  # no ground truth for b
        assert "b" not in stored.ground_truth
        stats = loaded.model_stats()
        assert stats["a"].count == 1 and stats["a"].mean_score == 1.0
        assert stats["a"].judged_count == 0  # hidden under ground truth
        assert "b" not in stats  # judged only, judged_weight 0: no counted outcome


def test_newer_judged_replaces_older_judged_only() -> None:
    mem = memory()
    mem.add("q", E[0], [rec("a", 0.2, source="live_judged", timestamp=10.0)])
    mem.add("q", None, [rec("a", 0.9, source="live_judged", timestamp=5.0)])  # older
    judged = mem.get("q").judged  # type: ignore[union-attr]
    assert judged["a"].score == 0.2
    mem.add("q", None, [rec("a", 0.7, source="live_judged", timestamp=30.0)])
    assert mem.get("q").judged["a"].score == 0.7  # type: ignore[union-attr]


def test_user_feedback_wins_over_recordings() -> None:
    mem = memory()
    mem.add("q", E[0], [rec("a", 0.0, source="user_feedback", timestamp=10.0)])
    mem.add("q", None, [rec("a", 1.0, source="recording", timestamp=99.0)])  # newer, a recording
    truth = mem.get("q").ground_truth  # type: ignore[union-attr]
    assert (truth["a"].source, truth["a"].score) == ("user_feedback", 0.0)
    mem.add("r", E[1], [rec("a", 1.0, timestamp=50.0)])
    mem.add("r", None, [rec("a", 0.0, source="user_feedback", timestamp=1.0)])  # older feedback
    assert mem.get("r").ground_truth["a"].source == "user_feedback"  # type: ignore[union-attr]
    assert mem.model_stats()["a"].count == 2 and mem.model_stats()["a"].mean_score == 0.0


def test_predicted_category_never_overwrites_a_label(tmp_path: Path) -> None:
    mem = memory(min_category_count=1)
    mem.add("q", E[0], [rec("a", 1.0)], category="math", category_is_label=True)
    mem.add("q", None, [rec("b", 1.0)], category="code")  # a classifier's guess
    mem.add("live", E[1], [rec("a", 0.0)], category="code")
    for loaded in (mem, _round_trip(mem, tmp_path)):
        stored = loaded.get("q")
        assert stored is not None
        assert (stored.category, stored.label, stored.predicted_category) == (
            "math",
            "math",
            "code",
        )
        assert set(loaded.model_stats("math")) == {"a", "b"}
        assert loaded.model_stats("code")["a"].mean_score == 0.0  # only "live" is code
    # A label given later replaces a predicted category, and the totals follow.
    mem.add("live", None, [], category="math", category_is_label=True)
    assert mem.model_stats("math")["a"].count == 2
    assert mem.model_stats("code") == {}


def _near_probe_memories(
    weight: float, **more: object
) -> tuple[OutcomeMemory, OutcomeMemory, np.ndarray]:
    """Same ground truth; the second memory also holds judged outcomes near the probe."""
    settings = {"judged_weight": weight, "shrinkage": 1.0, "alpha": 1.0, "min_category_count": 1}
    settings.update(more)
    plain, judged = memory(**settings), memory(**settings)
    for mem in (plain, judged):
        mem.add("t1", unit(E[0] + 0.5 * E[1]), [rec("a", 1.0, cost_usd=0.01)], category="x")
        mem.add("t2", unit(E[0] + 0.5 * E[2]), [rec("a", 1.0, cost_usd=0.01)], category="x")
    for i in range(3):
        judged.add(
            f"j{i}",
            unit(E[0] + 0.3 * E[3 + i]),
            [rec("a", 0.0, source="live_judged", cost_usd=0.05)],
            category="x",
        )
    return plain, judged, E[0]


def test_judged_weight_zero_leaves_predictions_unmoved() -> None:
    plain, judged, probe = _near_probe_memories(0.0)
    for category in (None, "x"):
        before = plain.predict(probe, ["a"], category=category)["a"]
        after = judged.predict(probe, ["a"], category=category)["a"]
        for name in ("p_success", "exploration_bonus", "ucb", "prior", "prior_source", "n_truth"):
            assert getattr(after, name) == getattr(before, name), name
        assert after.n_eff == before.n_eff
        assert after.evidence.query_ids == before.evidence.query_ids  # judged ones weigh 0
        # Counting for nothing, judged-only queries are not neighbours at all.
        assert (after.truth_count, after.judged_count) == (2, 0)
        assert after.n_judged == 0
        assert judged.model_stats(category)["a"].mean_score == 1.0
        assert judged.model_stats(category)["a"].judged_count == 3


def test_judged_weight_above_zero_counts_judged_outcomes() -> None:
    weight = 0.5
    plain, judged, probe = _near_probe_memories(weight)
    before = plain.predict(probe, ["a"])["a"]
    after = judged.predict(probe, ["a"])["a"]
    assert after.p_success < before.p_success  # the judges said 0
    assert after.n_eff == pytest.approx(after.n_truth + weight * after.n_judged)
    assert sum(after.evidence.judged) == 3
    judged_w = [w for w, j in zip(after.evidence.weights, after.evidence.judged, strict=True) if j]
    assert sum(judged_w) == pytest.approx(weight * after.n_judged)
    expected = (after.n_truth * 1.0 + after.prior * 1.0) / (after.n_eff + 1.0)
    assert after.p_success == pytest.approx(expected)
    # The prior counts the judged outcomes at the same weight, (2 * 1 + 0.5 * 3 * 0) of 3.5,
    # shrunk toward the default prior 0.5 by shrinkage=1 pseudo-outcome.
    assert after.prior == pytest.approx((2.0 + 0.5) / (2 + weight * 3 + 1))
    stats = judged.model_stats()["a"]
    assert stats.mean_score == pytest.approx(2.0 / 3.5)
    # Costs are measured, not judged: they count in full whatever the weight.
    assert stats.mean_cost_usd == pytest.approx((2 * 0.01 + 3 * 0.05) / 5)


def test_judged_only_rows_never_take_a_ground_truth_neighbour_s_slot(tmp_path: Path) -> None:
    """At any weight the k neighbours with ground truth stay; judged-only rows nearer the
    probe add to them, so the estimate moves continuously from the weight-0 one."""
    k = 2
    plain, judged, probe = _near_probe_memories(0.0, k=k)
    for mem in (plain, judged):
        mem.add("far", unit(E[0] + 2.0 * E[6]), [rec("a", 0.0)], category="x")  # 3rd truth row
    base = plain.predict(probe, ["a"])["a"]
    estimates = []
    for weight in (1e-6, 0.3):
        judged.weigh_judged(weight)
        got = judged.predict(probe, ["a"])["a"]
        pairs = zip(got.evidence.query_ids, got.evidence.judged, strict=True)
        truth_ids = [q for q, is_judged in pairs if not is_judged]
        assert sorted(truth_ids) == sorted(base.evidence.query_ids) == ["t1", "t2"]
        assert (got.truth_count, got.judged_count) == (2, k)  # the judged rows nearest the probe
        assert got.n_truth == pytest.approx(base.n_truth)
        estimates.append(got.p_success)
    assert estimates[0] == pytest.approx(base.p_success, abs=1e-5)
    assert estimates[1] < base.p_success  # the judges said 0
    loaded = _round_trip(judged, tmp_path)  # which rows hold ground truth survives a load
    loaded.weigh_judged(0.3)
    assert loaded.predict(probe, ["a"])["a"] == judged.predict(probe, ["a"])["a"]
    judged.add("j0", None, [rec("a", 1.0)])  # ground truth arrives for a judged-only row
    evidence = judged.predict(probe, ["a"])["a"].evidence
    now_truth = [q for q, j in zip(evidence.query_ids, evidence.judged, strict=True) if not j]
    assert "j0" in now_truth and len(now_truth) == k  # it takes a ground-truth slot now


def test_predictions_follow_the_documented_formula() -> None:
    """predict_arrays against a brute-force reading of the package docstring's formula."""
    rng = np.random.default_rng(3)
    n, dim, k, models = 400, 16, 7, ["m0", "m1", "m2"]
    settings = MemorySettings(k=k, alpha=2.0, shrinkage=1.5, min_category_count=4, exploration=0.3)
    mem = OutcomeMemory(dim, EMBEDDER, settings)
    vectors = random_units(n, dim, 3)
    cats = [("a", "b", None)[i % 3] for i in range(n)]
    table = np.full((n, len(models)), np.nan)
    for i in range(n):
        outs = []
        for j, model in enumerate(models):
            if rng.random() < 0.7:
                table[i, j] = float(rng.random())
                outs.append(rec(model, table[i, j]))
        mem.add(f"q{i}", vectors[i], outs, category=cats[i])
    probes = random_units(30, dim, 4)
    probe_cats = [("a", "b", None)[i % 3] for i in range(30)]
    got = mem.predict_arrays(probes, models, categories=probe_cats)
    for b, probe in enumerate(probes):
        sims = vectors @ probe
        nearest = np.argsort(-sims)[:k]
        for j in range(len(models)):
            column = table[:, j]
            in_cat = [i for i in range(n) if cats[i] == probe_cats[b] and not np.isnan(column[i])]
            if probe_cats[b] is not None and len(in_cat) >= 4:
                prior = float(np.mean(column[in_cat]))
            else:
                known = column[~np.isnan(column)]
                prior = float((known.sum() + 1.5 * 0.5) / (len(known) + 1.5))  # shrunk to 0.5
            w = np.array(
                [max(sims[i], 0.0) ** 2 if not np.isnan(column[i]) else 0 for i in nearest]
            )
            s = np.nan_to_num(column[nearest])
            expected = (float(w @ s) + 1.5 * prior) / (w.sum() + 1.5)
            assert got.prior[b, j] == pytest.approx(prior, rel=1e-9)
            assert got.p_success[b, j] == pytest.approx(expected, rel=1e-5)
            assert got.exploration_bonus[b, j] == pytest.approx(0.3 / np.sqrt(1 + w.sum()), 1e-5)
            assert got.truth_count[b, j] == int((w > 0).sum()) and got.judged_count[b, j] == 0


def test_format_1_memory_loads_with_sources_split(tmp_path: Path) -> None:
    """A generation written in format 1 (one outcome per cell) loads: judged cells apart,
    categories as labels, predictions from ground truth only."""
    vectors = np.stack([E[0], E[1], unit(E[0] + E[1])])
    score = np.array([[1.0, np.nan], [0.0, 0.5], [np.nan, 0.25]])
    source = np.array([[0, -1], [0, 1], [-1, 2]], dtype=np.int8)  # 1 live_judged, 2 feedback
    row_category = np.array([0, 1, -1], dtype=np.int32)
    _write_format_1(tmp_path, vectors, score, source, row_category, ["math", "code"])
    mem = OutcomeMemory.load(tmp_path, expected_embedder_id=EMBEDDER)
    q1 = mem.get("q1")
    assert q1 is not None and q1.label == "code"
    assert q1.ground_truth["a"].score == 0.0 and q1.ground_truth["a"].source == "recording"
    assert q1.judged["b"].score == 0.5
    assert q1.ground_truth == {"a": q1.ground_truth["a"]}
    assert mem.get("q2").ground_truth["b"].source == "user_feedback"  # type: ignore[union-attr]
    stats = mem.model_stats()
    assert (stats["a"].count, stats["a"].mean_score) == (2, 0.5)
    assert (stats["b"].count, stats["b"].judged_count, stats["b"].mean_score) == (1, 1, 0.25)
    assert mem.model_stats("math")["a"].mean_score == 1.0


def _round_trip(mem: OutcomeMemory, tmp_path: Path) -> OutcomeMemory:
    directory = tmp_path / f"rt-{len(list(tmp_path.iterdir()))}"
    mem.save(directory)
    return OutcomeMemory.load(directory)


def _write_format_1(
    directory: Path,
    vectors: np.ndarray,
    score: np.ndarray,
    source: np.ndarray,
    row_category: np.ndarray,
    categories: list[str],
) -> None:
    """What emafusion's format-1 `save` wrote, byte layout and all."""
    import hashlib

    n, m = score.shape
    index = faiss.IndexFlatIP(DIM)
    index.add(vectors.astype(np.float32))
    present = ~np.isnan(score)
    cost = np.where(present, 0.01, np.nan)
    groups = len(categories) + 1
    total_count = np.zeros((3, groups, m), dtype=np.int64)
    total_sum = np.zeros((3, groups, m))
    for r in range(n):
        for c in range(m):
            if not present[r, c]:
                continue
            for g in (0,) if row_category[r] < 0 else (0, row_category[r] + 1):
                for metric, value in enumerate((score[r, c], cost[r, c])):
                    total_count[metric, g, c] += 1
                    total_sum[metric, g, c] += value
    buffer = io.BytesIO()
    np.savez(
        buffer,
        row_category=row_category,
        score=score,
        cost_usd=cost,
        latency_s=np.full((n, m), np.nan),
        timestamp=np.where(present, 100.0, np.nan),
        source=source,
        total_count=total_count,
        total_sum=total_sum,
    )
    files = {
        "index.faiss": faiss.serialize_index(index).tobytes(),
        "outcomes.npz": buffer.getvalue(),
    }
    generation = directory / "gen-000001-0123abcd"
    generation.mkdir(parents=True)
    meta = {
        "format": "emafusion-outcome-memory",
        "format_version": 1,
        "embedder_id": EMBEDDER,
        "dim": DIM,
        "index_kind": "flat",
        "settings": {"k": 20},
        "n_rows": n,
        "query_ids": [f"q{i}" for i in range(n)],
        "models": ["a", "b"][:m],
        "categories": categories,
        "sources": ["recording", "live_judged", "user_feedback"],
        "saved_at": 0.0,
        "files": {},
    }
    for name, data in files.items():
        (generation / name).write_bytes(data)
        meta["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    meta_bytes = json.dumps(meta).encode()
    (generation / "meta.json").write_bytes(meta_bytes)
    manifest = {
        "format": "emafusion-outcome-memory",
        "format_version": 1,
        "generation": generation.name,
        "meta_sha256": hashlib.sha256(meta_bytes).hexdigest(),
        "embedder_id": EMBEDDER,
    }
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest))


def test_judged_only_rows_never_take_a_neighbour_slot_when_they_count_for_nothing() -> None:
    rng = np.random.default_rng(3)
    mem = OutcomeMemory(DIM, EMBEDDER, MemorySettings(k=4))
    probe = unit(rng.normal(size=DIM))
    for i in range(12):
        vector = unit(probe + 0.3 * rng.normal(size=DIM))
        mem.add(f"truth/{i}", vector, [rec("a", float(i % 2))])
    before = mem.predict(probe, ["a"])["a"]
    for i in range(8):  # closer to the probe than any stored query, judged only
        vector = unit(probe + 0.01 * rng.normal(size=DIM))
        mem.add(f"live/{i}", vector, [rec("a", 1.0, source="live_judged")])
    after = mem.predict(probe, ["a"])["a"]
    assert after.evidence.query_ids == before.evidence.query_ids
    assert len(after.evidence.query_ids) == 4
    assert after.p_success == before.p_success
