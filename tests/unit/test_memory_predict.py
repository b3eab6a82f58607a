"""OutcomeMemory in one process: prediction, online learning, threads, bad input."""

from __future__ import annotations

import asyncio
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from emafusion.stores.embeddings import HashEmbedder
from emafusion.stores.memory import (
    MemorySettings,
    OutcomeMemory,
    OutcomeMemoryError,
    OutcomeRecord,
)
from tests.unit.memory_helpers import DIM, EMBEDDER, E, memory, populated, random_units, rec, unit

# ------------------------------------------------------------------------------ prediction


def test_nearest_outcomes_dominate() -> None:
    mem = memory(shrinkage=0.2)
    mem.add("near", E[0], [rec("a", 1.0)])
    for i in range(1, 6):
        mem.add(f"far{i}", unit(E[i] + 0.2 * E[0]), [rec("a", 0.0)])
    near = mem.predict(unit(E[0] + 0.05 * E[1]), ["a"])["a"]
    far = mem.predict(E[3], ["a"])["a"]
    assert near.p_success > 0.75
    assert far.p_success < 0.25
    assert near.evidence.query_ids[0] == "near"
    assert near.evidence.similarities[0] == pytest.approx(max(near.evidence.similarities))


def test_prior_wins_on_empty_memory() -> None:
    mem = memory(default_prior=0.4, model_priors={"gpt": 0.9})
    preds = mem.predict(E[0], ["gpt", "other"])
    assert preds["gpt"].p_success == 0.9
    assert preds["gpt"].prior_source == "declared"
    assert preds["other"].p_success == 0.4
    assert preds["other"].prior_source == "default"
    assert preds["other"].evidence.query_ids == ()
    assert preds["other"].expected_cost_usd is None


def test_prior_wins_without_neighbours() -> None:
    # Orthogonal neighbours have similarity 0, so the power kernel gives them no weight.
    mem = memory()
    mem.add("x", E[0], [rec("a", 1.0, cost_usd=0.02)])
    mem.add("y", E[1], [rec("a", 0.0, cost_usd=0.04)])
    pred = mem.predict(E[7], ["a"])["a"]
    assert pred.prior_source == "global"
    assert pred.prior == pytest.approx(0.5)
    assert pred.p_success == pytest.approx(0.5)
    assert pred.evidence.n_eff == 0.0
    assert pred.evidence.query_ids == ()
    assert pred.expected_cost_usd == pytest.approx(0.03)  # the model's mean cost


def test_a_few_outcomes_move_the_global_prior_only_as_far_as_they_weigh() -> None:
    """One lucky answer is not a model that is always right: the global mean is shrunk
    toward the declared (else default) prior by `shrinkage` pseudo-outcomes."""
    mem = memory(shrinkage=2.0, model_priors={"declared": 0.8})
    mem.add("x", E[0], [rec("new", 1.0), rec("declared", 0.0)])
    preds = mem.predict(E[7], ["new", "declared"])
    assert preds["new"].prior == pytest.approx((1.0 + 2 * 0.5) / 3)
    assert preds["declared"].prior == pytest.approx((0.0 + 2 * 0.8) / 3)
    for i in range(2000):
        mem.add(f"q{i}", unit(E[1] + 0.01 * E[2 + i % 5]), [rec("new", 1.0)])
    assert mem.predict(E[7], ["new"])["new"].prior == pytest.approx(1.0, abs=1e-3)


def test_category_prior_used_when_it_has_enough_records() -> None:
    mem = memory(min_category_count=3)
    for i in range(3):
        mem.add(f"m{i}", unit(E[i] + E[3]), [rec("a", 1.0)], category="math")
    for i in range(2):
        mem.add(f"c{i}", unit(E[i] + E[4]), [rec("a", 0.0)], category="code")
    probe = E[7]
    math_pred = mem.predict(probe, ["a"], category="math")["a"]
    code_pred = mem.predict(probe, ["a"], category="code")["a"]
    unknown_pred = mem.predict(probe, ["a"], category="law")["a"]
    assert (math_pred.prior_source, math_pred.p_success) == ("category", 1.0)
    assert code_pred.prior_source == "global"  # only 2 < 3 records in "code"
    # 3 of 5 right, shrunk toward the default prior 0.5 by shrinkage=2 pseudo-outcomes.
    assert code_pred.p_success == pytest.approx((3 + 2 * 0.5) / (5 + 2))
    assert unknown_pred.prior_source == "global"


def test_shrinkage_formula() -> None:
    mem = memory(shrinkage=2.0, alpha=1.0)
    mem.add("x", E[0], [rec("a", 1.0)])
    mem.add("y", E[1], [rec("a", 0.0)])
    probe = unit(E[0] + E[2])
    w = float(probe @ E[0])
    pred = mem.predict(probe, ["a"])["a"]
    assert pred.p_success == pytest.approx((w * 1.0 + 2.0 * 0.5) / (w + 2.0))
    assert pred.evidence.n_eff == pytest.approx(w)


def test_add_then_predict_without_rebuild() -> None:
    for kind in ("flat", "hnsw"):
        mem = memory(index_kind=kind, shrinkage=0.5)
        mem.add("far", E[5], [rec("a", 0.0)])
        before = mem.predict(E[0], ["a"])["a"]
        assert before.evidence.n_eff == 0.0
        assert mem.add("new", E[0], [rec("a", 1.0)]) is True
        after = mem.predict(E[0], ["a"])["a"]
        assert after.evidence.query_ids == ("new",)
        assert after.p_success > 0.6


def test_outcomes_for_a_known_query_update_it() -> None:
    mem = memory()
    mem.add("q", E[0], [rec("a", 0.2, timestamp=10.0)], category="math")
    assert mem.add("q", None, [rec("b", 0.9, timestamp=20.0)]) is False
    assert mem.add("q", E[0], [rec("a", 0.8, timestamp=30.0)]) is False
    mem.add("q", None, [rec("a", 0.0, timestamp=5.0)])  # older: must not win
    assert len(mem) == 1
    stored = mem.get("q")
    assert stored is not None
    assert stored.category == "math"
    assert {m: r.score for m, r in stored.outcomes.items()} == {"a": 0.8, "b": 0.9}
    assert mem.models == ["a", "b"]


def test_exploration_bonus_shrinks_with_evidence() -> None:
    mem = memory(model_priors={"fresh": 0.7}, exploration=0.3)
    for i in range(5):
        mem.add(f"old{i}", unit(E[0] + 0.1 * E[i + 1]), [rec("veteran", 0.9)])
    probe = E[0]
    first = mem.predict(probe, ["fresh"])["fresh"]
    assert (first.p_success, first.prior_source) == (0.7, "declared")
    assert first.exploration_bonus == pytest.approx(0.3)
    assert first.ucb == pytest.approx(1.0)
    bonuses = [first.exploration_bonus]
    for i in range(5):
        mem.add(f"old{i}", None, [rec("fresh", 0.4)])
        pred = mem.predict(probe, ["fresh"])["fresh"]
        bonuses.append(pred.exploration_bonus)
        assert pred.ucb == pytest.approx(min(1.0, pred.p_success + pred.exploration_bonus))
        assert pred.p_success < 0.7  # judged on its record, the bonus not folded in
    assert all(b2 < b1 for b1, b2 in zip(bonuses, bonuses[1:], strict=False))
    assert pred.optimistic == pred.ucb


def test_time_decay_favours_recent_outcomes() -> None:
    day = 86_400.0
    now = 30 * day
    for half_life, expect_high in ((None, False), (day, True)):
        mem = memory(half_life_s=half_life, shrinkage=0.1)
        mem.add("old", E[0], [rec("a", 0.0, timestamp=0.0)])
        mem.add("recent", E[0], [rec("a", 1.0, timestamp=now - 60.0)])
        p = mem.predict(E[0], ["a"], now=now)["a"].p_success
        if expect_high:
            assert p > 0.95
        else:
            assert p == pytest.approx(0.5)


def test_predict_batch_matches_predict_and_exclude() -> None:
    mem = populated("flat", n=120)
    vectors = random_units(120, 32, 0)[:10]
    batch = mem.predict_batch(vectors, ["m0", "m1", "zzz"], categories=["math"] * 10, now=2e6)
    for i in range(10):
        assert batch[i] == mem.predict(vectors[i], ["m0", "m1", "zzz"], category="math", now=2e6)
    own = mem.predict(vectors[0], ["m0"], now=2e6)["m0"].evidence.query_ids
    loo = mem.predict(vectors[0], ["m0"], now=2e6, exclude_id="q0")["m0"].evidence.query_ids
    assert "q0" in own and "q0" not in loo
    arrays = mem.predict_arrays(vectors, ["m0", "m1"], now=2e6)
    assert arrays.p_success.shape == arrays.ucb.shape == (10, 2)
    assert np.all(arrays.ucb >= arrays.p_success)


def test_model_stats() -> None:
    mem = memory()
    mem.add("x", E[0], [rec("a", 1.0, cost_usd=0.1), rec("b", 0.0)], category="math")
    mem.add("y", E[1], [rec("a", 0.0, cost_usd=0.3, latency_s=2.0)], category="code")
    stats = mem.model_stats()
    assert stats["a"].count == 2 and stats["a"].mean_score == 0.5
    assert stats["a"].mean_cost_usd == pytest.approx(0.2)
    assert stats["a"].mean_latency_s == 2.0
    assert stats["b"].mean_cost_usd is None
    math_stats = mem.model_stats("math")
    assert set(math_stats) == {"a", "b"} and math_stats["a"].mean_score == 1.0
    assert mem.model_stats("law") == {}
    assert len(mem) == 2 and "x" in mem


def test_statistics_follow_updates_and_category_changes(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    mem = memory()
    vectors = random_units(30, DIM, 7)
    for step in range(400):
        i = int(rng.integers(0, 30))
        category = [None, "math", "code", "law"][int(rng.integers(0, 4))]
        record = rec(
            f"m{rng.integers(0, 4)}",
            float(rng.random()),
            cost_usd=float(rng.random()) if rng.random() < 0.5 else None,
            timestamp=float(step if rng.random() < 0.9 else 0),
        )
        mem.add(f"q{i}", vectors[i], [record], category=category)
    records = mem.records()
    for category in (None, "math", "code", "law"):
        stats = mem.model_stats(category)
        for model in mem.models:
            outcomes = [
                r.outcomes[model]
                for r in records
                if model in r.outcomes and category in (None, r.category)
            ]
            if not outcomes:
                assert model not in stats
                continue
            costs = [o.cost_usd for o in outcomes if o.cost_usd is not None]
            assert stats[model].count == len(outcomes)
            assert stats[model].mean_score == pytest.approx(np.mean([o.score for o in outcomes]))
            assert stats[model].cost_count == len(costs)
            if costs:
                assert stats[model].mean_cost_usd == pytest.approx(np.mean(costs))
    mem.save(tmp_path)
    loaded = OutcomeMemory.load(tmp_path)
    for category in (None, "math", "code", "law"):
        assert loaded.model_stats(category) == mem.model_stats(category)


def test_bulk_and_one_by_one_adds_agree() -> None:
    n = 400  # 1200 outcomes: add_many takes its bulk path
    rng = np.random.default_rng(5)
    vectors = random_units(n, DIM, 5)
    ids = [f"q{i}" for i in range(n)]
    categories = [("math", "code", None)[i % 3] for i in range(n)]
    outcomes = [
        [rec(f"m{j}", float(rng.random()), cost_usd=float(rng.random())) for j in range(3)]
        for _ in range(n)
    ]
    bulk, single = memory(), memory()
    bulk.add_many(ids, vectors, outcomes, categories)
    for args in zip(ids, vectors, outcomes, categories, strict=True):
        single.add(*args)
    assert bulk.records() == single.records()
    for category in (None, "math", "code"):
        expected = single.model_stats(category)
        for model, stats in bulk.model_stats(category).items():
            assert stats.count == expected[model].count
            assert stats.mean_score == pytest.approx(expected[model].mean_score)
    bulk.add("late", E[0], [rec("brand-new-model", 1.0)], category="law")
    assert bulk.model_stats("law")["brand-new-model"].count == 1


def test_works_with_a_swappable_embedder() -> None:
    embedder = HashEmbedder(dim=64)
    mem = OutcomeMemory.for_embedder(embedder)
    texts = ["solve the integral of x squared", "write a python function to sort a list"]
    mem.add_many(
        ["math", "code"], embedder.embed(texts), [[rec("mathbot", 1.0)], [rec("mathbot", 0.0)]]
    )
    probe = embedder.embed(["solve the integral of sin x"])[0]
    pred = mem.predict(probe, ["mathbot"])["mathbot"]
    assert pred.evidence.query_ids[0] == "math"


# ------------------------------------------------------------------------------ concurrency


async def test_concurrent_writers_lose_no_record() -> None:
    mem = OutcomeMemory(16, EMBEDDER, MemorySettings(k=5))
    shared_vectors = random_units(5, 16, 1234)
    per_writer = 20

    def writer(w: int) -> None:
        vectors = random_units(per_writer, 16, w)
        for i in range(per_writer):
            mem.add(f"w{w}-{i}", vectors[i], [rec(f"m{w % 4}", 0.5)], category=f"c{w % 3}")
            if i < len(shared_vectors):
                mem.add(f"shared{i}", shared_vectors[i], [rec(f"writer{w}", 1.0)])
            mem.predict(vectors[i], ["m0", "m1"])

    loop = asyncio.get_running_loop()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often so unguarded races would show up
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            threads = [loop.run_in_executor(pool, writer, w) for w in range(8)]
            tasks = [asyncio.to_thread(writer, w) for w in range(8, 16)]
            await asyncio.gather(*threads, *tasks)
    finally:
        sys.setswitchinterval(interval)

    assert len(mem) == 16 * per_writer + len(shared_vectors)
    for w in range(16):
        for i in range(per_writer):
            stored = mem.get(f"w{w}-{i}")
            assert stored is not None and set(stored.outcomes) == {f"m{w % 4}"}
    for i in range(len(shared_vectors)):
        stored = mem.get(f"shared{i}")
        assert stored is not None and set(stored.outcomes) == {f"writer{w}" for w in range(16)}
    # Every row is searchable and maps back to its own id.
    for query_id in ("w3-7", "w12-0", "shared2"):
        found = mem.predict(mem.vector(query_id), None, k=1)
        assert any(p.evidence.query_ids[:1] == (query_id,) for p in found.values())


# ------------------------------------------------------------------------------ bad input


def test_error_is_a_value_error() -> None:
    assert issubclass(OutcomeMemoryError, ValueError)


def test_wrong_vector_dimension() -> None:
    mem = memory()
    with pytest.raises(OutcomeMemoryError, match=r"dimension 5.*8-d.*test-embedder"):
        mem.add("q", unit(np.ones(5)), [rec("a", 1.0)])
    with pytest.raises(OutcomeMemoryError, match="dimension"):
        mem.predict(unit(np.ones(9)), ["a"])
    with pytest.raises(OutcomeMemoryError, match="dimension"):
        mem.add_many(["a", "b"], random_units(2, 4, 0), [[], []])
    assert len(mem) == 0


def test_non_normalized_vectors_rejected_unless_enabled() -> None:
    with pytest.raises(OutcomeMemoryError, match=r"norm 3\.0000.*normalize_inputs=True"):
        memory().add("q", 3 * E[0], [rec("a", 1.0)])
    mem = memory(normalize_inputs=True)
    mem.add("q", 3 * E[0], [rec("a", 1.0)])
    assert np.allclose(mem.vector("q"), E[0])
    for bad, match in ((np.zeros(DIM), "all zeros"), (np.full(DIM, np.nan), "NaN")):
        with pytest.raises(OutcomeMemoryError, match=match):
            mem.add("z", bad, [rec("a", 1.0)])


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"score": 1.5}, r"score must be in \[0, 1\], got 1.5"),
        ({"score": -0.1}, r"score must be in \[0, 1\]"),
        ({"score": float("nan")}, "score must be finite"),
        ({"cost_usd": float("nan")}, "cost_usd must be finite.*use None"),
        ({"cost_usd": -1.0}, "cost_usd must be >= 0"),
        ({"latency_s": float("inf")}, "latency_s must be finite"),
        ({"source": "guess"}, "source must be one of"),
        ({"model": ""}, "model must be a non-empty str"),
        ({"score": True}, "score must be a number"),
    ],
)
def test_bad_outcome_records(fields: dict[str, object], match: str) -> None:
    base: dict[str, object] = {"model": "a", "score": 0.5, "source": "recording"}
    with pytest.raises(OutcomeMemoryError, match=match):
        OutcomeRecord(**{**base, **fields})


def test_bad_add_calls_change_nothing() -> None:
    mem = memory()
    with pytest.raises(OutcomeMemoryError, match="score must be in"):
        mem.add_many(
            ["a", "b"],
            np.stack([E[0], E[1]]),
            [[rec("m", 1.0)], [{"model": "m", "score": 2.0, "source": "recording"}]],
        )
    with pytest.raises(OutcomeMemoryError, match="not in the memory yet; pass its vector"):
        mem.add("ghost", None, [rec("m", 1.0)])
    with pytest.raises(OutcomeMemoryError, match="wrap it in a list"):
        mem.add("q", E[0], rec("m", 1.0))
    with pytest.raises(OutcomeMemoryError, match="one of each per query"):
        mem.add_many(["a"], np.stack([E[0], E[1]]), [[], []])
    with pytest.raises(OutcomeMemoryError, match="category must be"):
        mem.add("q", E[0], [], category="")
    assert len(mem) == 0 and mem.models == []


def test_bad_settings() -> None:
    with pytest.raises(OutcomeMemoryError, match="index_kind"):
        MemorySettings(index_kind="ivf")
    with pytest.raises(OutcomeMemoryError, match=r"model_priors\['x'\]"):
        MemorySettings(model_priors={"x": 1.2})
