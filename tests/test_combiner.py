"""The learned combiner's calibration, threshold selection by goal, judge selection, and the
cascade replay checked against the real graph."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from emafusion.graph.cli_judges import traces_from_results
from emafusion.graph.context import Context
from emafusion.graph.evaluate import run_graph
from emafusion.graph.state import JudgeVerdict
from emafusion.nodes.escalate import combine
from emafusion.nodes.resources import RouterResources
from emafusion.stores.combiner import (
    CascadeTraces,
    CombinerBook,
    CombinerError,
    Goal,
    JudgeSignals,
    fit_book,
    fit_combiner,
    load_combiners,
    select_judges,
    select_threshold,
    simulate,
    static_confidence,
    threshold_curve,
)
from emafusion.stores.metrics import auroc, expected_calibration_error
from emafusion.stores.recordings import RecordSet


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1 - p))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def _synthetic(n: int, seed: int) -> tuple[JudgeSignals, np.ndarray]:
    """Answers right with known probability p; judges see p through distortions.

    "sharp" is overconfident (log-odds doubled), "noisy" sees p through noise and abstains
    on a third of answers, "coin" knows nothing. P(right | sharp) is p exactly.
    """
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.03, 0.97, n)
    labels = rng.random(n) < p
    sharp = _sigmoid(2.0 * _logit(p))
    noisy = _sigmoid(0.5 * _logit(p) + rng.normal(0, 1.0, n))
    noisy[rng.random(n) < 1 / 3] = np.nan
    coin = rng.random(n)
    scores = np.stack([sharp, noisy, coin], axis=1)
    signals = JudgeSignals(("sharp", "noisy", "coin"), scores, np.zeros_like(scores), labels)
    return signals, p


def test_learned_combiner_recovers_known_probabilities() -> None:
    train, _ = _synthetic(6000, seed=1)
    test, p_true = _synthetic(20000, seed=2)
    combiner = fit_combiner(train)
    predicted = combiner.predict(test.scores)
    # "0.8 means right 80% of the time": the combined confidence is the true probability.
    assert np.abs(predicted - p_true).mean() < 0.02
    learned_ece = expected_calibration_error(predicted, test.labels)
    assert learned_ece < 0.015
    # The static mean of an overconfident, a noisy and a useless judge is far less so.
    static = static_confidence(test.scores, test.judges, {})
    assert expected_calibration_error(static, test.labels) > 2 * learned_ece
    # The regression found the log-odds scale of the sharp judge (1/2) and ignored the coin.
    weights = dict(zip(combiner.judges, combiner.weights, strict=True))
    assert weights["sharp"] == pytest.approx(0.5, abs=0.05)
    assert weights["coin"] < 0.05
    assert auroc(predicted, test.labels) >= auroc(static, test.labels)


def test_combiner_weights_are_never_negative() -> None:
    signals, _ = _synthetic(3000, seed=3)
    # A judge that is the inverse of a good one fits a negative weight unconstrained.
    inverted = 1.0 - signals.scores[:, :1]
    scores = np.hstack([signals.scores, inverted])
    judges = (*signals.judges, "inverted")
    combiner = fit_combiner(JudgeSignals(judges, scores, np.zeros_like(scores), signals.labels))
    assert (combiner.weights >= 0).all()
    assert combiner.info["zero_weight"]


def test_combine_handles_abstention_and_absent_judges() -> None:
    signals, _ = _synthetic(3000, seed=4)
    combiner = fit_combiner(signals)
    row = {"sharp": 0.9, "noisy": None, "coin": 0.5}
    expected = combiner.predict(np.array([[0.9, np.nan, 0.5]]))[0]
    assert combiner.combine(row) == pytest.approx(expected)
    # A judge missing from the mapping abstained, the same as None.
    assert combiner.combine({"sharp": 0.9, "coin": 0.5}) == pytest.approx(expected)


def test_static_confidence_is_the_graphs_combine() -> None:
    rng = np.random.default_rng(5)
    judges = ("a", "b", "c")
    weights = {"a": 2.0, "c": 0.0}
    scores = rng.random((200, 3))
    scores[rng.random((200, 3)) < 0.3] = np.nan
    ours = static_confidence(scores, judges, weights)
    for row, value in zip(scores, ours, strict=True):
        verdicts = [
            JudgeVerdict(
                judge=j,
                attempt=0,
                score=None if np.isnan(s) else float(s),
                cost_usd=0.0,
                detail="",
                latency_ms=0.0,
            )
            for j, s in zip(judges, row, strict=True)
        ]
        theirs = combine(verdicts, weights)
        assert (theirs is None and np.isnan(value)) or theirs == pytest.approx(value)


def test_fit_rejects_too_little_or_one_sided_data() -> None:
    signals, _ = _synthetic(100, seed=6)
    one_sided = dataclasses.replace(signals, labels=np.ones(100, dtype=bool))
    with pytest.raises(CombinerError, match="some right and some wrong"):
        fit_combiner(one_sided)
    with pytest.raises(CombinerError, match=r"must be \(answers, judges\)"):
        JudgeSignals(("a",), np.zeros((3, 2)), np.zeros((3, 2)), np.zeros(3, dtype=bool))
    with pytest.raises(CombinerError, match=r"in \[0, 1\]"):
        JudgeSignals(("a",), np.full((3, 1), 1.5), np.zeros((3, 1)), np.zeros(3, dtype=bool))


def test_book_saves_loads_and_names_missing_subsets(tmp_path: Path) -> None:
    signals, _ = _synthetic(1000, seed=7)
    book = fit_book(signals)
    assert len(book.combiners) == 7  # every non-empty subset of three judges
    book.save(tmp_path)
    loaded = load_combiners(tmp_path)
    assert loaded is not None
    for key, combiner in book.combiners.items():
        again = loaded.get(reversed(key))  # the order of judge names does not matter
        assert np.allclose(
            again.predict(signals.select(key).scores), combiner.predict(signals.select(key).scores)
        )
    with pytest.raises(CombinerError, match=r"no learned combiner for judges \['verifier'\]"):
        loaded.get(["verifier"])
    assert load_combiners(tmp_path / "nothing-here") is None
    data = json.loads((tmp_path / "combiner.json").read_text())
    data["combiners"][0]["weights"] = [float("nan")] * len(data["combiners"][0]["judges"])
    (tmp_path / "combiner.json").write_text(json.dumps(data))
    with pytest.raises(CombinerError, match="non-finite.*judges train"):
        CombinerBook.load(tmp_path)


# --- cascade replay -----------------------------------------------------------------------


def _traces(
    conf: list[list[float]], correct: list[list[float]], cost: float = 1.0
) -> tuple[CascadeTraces, np.ndarray]:
    levels = max(len(c) for c in conf)
    answered = np.array([[i < len(c) for i in range(levels)] for c in conf])
    confidence = np.array([c + [np.nan] * (levels - len(c)) for c in conf])
    right = np.array([c + [0.0] * (levels - len(c)) for c in correct])
    model_costs = np.where(answered, cost * (1 + np.arange(levels))[None, :], 0.0)
    scores = confidence[:, :, None]
    traces = CascadeTraces(("j",), scores, np.zeros_like(scores), model_costs, right, answered, ())
    return traces, confidence


def test_simulate_decides_like_the_graph() -> None:
    traces, confidence = _traces(
        [[0.9, 0.5], [0.3, 0.8, 0.95], [0.4, 0.4], [0.2]],
        [[1, 0], [0, 1, 0], [0, 1], [1]],
    )
    result = simulate(traces, confidence, 0.7)
    # q0 returns at level 1; q1 at level 2; q2 never clears: the tie goes to the later
    # level; q3 has one level only.
    assert result.levels.tolist() == [1, 2, 2, 1]
    assert result.chosen.tolist() == [0, 1, 1, 0]
    assert result.accuracy == pytest.approx(1.0)
    assert result.cost_per_1k == pytest.approx(1000 * (1 + 3 + 3 + 1) / 4)
    assert result.escalation_rate == pytest.approx(0.5)
    # Above every confidence: every level is called, the most confident answer wins.
    everything = simulate(traces, confidence, 1.01)
    assert everything.levels.tolist() == [2, 3, 2, 1]
    assert everything.chosen.tolist() == [0, 2, 1, 0]
    # No judge spoke (NaN): the graph returns the answer.
    silent, _ = _traces([[0.1, 0.9]], [[1, 0]])
    assert simulate(silent, np.array([[np.nan, 0.9]]), 0.5).levels.tolist() == [1]


def test_thresholds_by_goal() -> None:
    rng = np.random.default_rng(9)
    n = 400
    # Level 1 is cheap and right when its confidence is high; level 2 is right 90%.
    c1 = rng.random(n)
    right1 = (rng.random(n) < c1).astype(float)
    right2 = (rng.random(n) < 0.9).astype(float)
    c2 = np.full(n, 0.9)
    traces, confidence = _traces(
        [[a, b] for a, b in zip(c1, c2, strict=True)],
        [[a, b] for a, b in zip(right1, right2, strict=True)],
    )
    curve = threshold_curve(traces, confidence)
    target = select_threshold(traces, confidence, Goal("target_accuracy", 0.75))
    assert target.met and target.result.accuracy >= 0.75
    # The cheapest point that reaches the target: every cheaper point misses it.
    cheaper = [r for r in curve if r.cost_per_1k < target.result.cost_per_1k - 1e-9]
    assert all(r.accuracy < 0.75 for r in cheaper)
    capped = select_threshold(traces, confidence, Goal("max_cost_per_1k", 2000.0))
    assert capped.met and capped.result.cost_per_1k <= 2000.0
    assert capped.result.accuracy == max(r.accuracy for r in curve if r.cost_per_1k <= 2000.0)
    rate = select_threshold(traces, confidence, Goal("max_escalation_rate", 0.25))
    assert rate.result.escalation_rate <= 0.25
    # Out of reach: the most accurate point, flagged.
    unreachable = select_threshold(traces, confidence, Goal("target_accuracy", 0.999))
    assert not unreachable.met
    assert unreachable.result.accuracy == max(r.accuracy for r in curve)
    with pytest.raises(CombinerError, match="fraction in"):
        Goal("target_accuracy", 70.0)


def test_judge_selection_drops_useless_and_overpriced_judges() -> None:
    rng = np.random.default_rng(10)
    n = 3000
    p = rng.uniform(0.05, 0.95, n)
    labels = rng.random(n) < p
    good = p
    noise = rng.random(n)
    pricey = np.clip(p + rng.normal(0, 0.02, n), 0, 1)  # as good, but costs $2 per 1k
    scores = np.stack([good, noise, pricey], axis=1)
    costs = np.zeros_like(scores)
    costs[:, 2] = 0.002
    signals = JudgeSignals(("good", "noise", "pricey"), scores, costs, labels)
    selection = select_judges(signals)
    assert selection.selected == ("good",)
    assert set(selection.dropped) == {"noise", "pricey"}
    assert "$2.0000 per 1k" in selection.dropped["pricey"]
    # A judge worth its price is kept: make the pricey one the only informative judge.
    alone = signals.select(["noise", "pricey"])
    assert select_judges(alone).selected == ("pricey",)


async def test_replay_matches_the_real_graph(
    make_resources: Callable[..., RouterResources], routerbench: RecordSet
) -> None:
    """Threshold selection replays traces; the graph must decide exactly the same."""
    resources = make_resources()
    records = routerbench.split("validation")[:40]
    judges = ("memory_prior", "answer_format", "agreement")
    base = Context(dataset="routerbench", resources=resources, record_outcomes=False, judges=judges)
    everything = await run_graph(
        records, dataclasses.replace(base, escalation_threshold=1.01), keep_trace=True
    )
    traces = traces_from_results(records, everything, judges)
    confidence = traces.confidence(lambda s: static_confidence(s, judges, {}))
    # Agreement is re-scored as later answers arrive; the fallback choice uses the end state.
    final = traces.final_confidence(lambda s: static_confidence(s, judges, {}))
    assert traces.answered.sum(axis=1).max() >= 2, "no cascade escalated; the test needs one"
    for threshold in np.quantile(confidence[traces.answered], [0.3, 0.7]):
        replay = simulate(traces, confidence, float(threshold), final)
        real = await run_graph(records, dataclasses.replace(base, escalation_threshold=threshold))
        assert [r.models_called for r in real] == replay.levels.tolist()
        assert np.mean([r.correct for r in real]) == pytest.approx(replay.accuracy)
        assert np.mean([r.cost_usd for r in real]) * 1000 == pytest.approx(replay.cost_per_1k)
