"""The learned combiner's calibration, threshold selection by goal (replayed through the
decision policy), and judge selection."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from emafusion.graph.state import AttemptView, CascadeView, DecidedEvent
from emafusion.nodes.policy import PolicySettings
from emafusion.stores.combiner import CombinerBook, CombinerError, load_combiners
from emafusion.stores.metrics import auroc, expected_calibration_error
from emafusion.train.combiner import JudgeSignals, fit_book, fit_combiner
from emafusion.train.judge_selection import select_judges
from emafusion.train.judges import static_confidences
from emafusion.train.threshold import Goal, select_threshold, threshold_curve
from emafusion.train.traces import JudgedTraces, QueryTrace


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
    static = static_confidences(test.scores, test.judges, {})
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


# --- thresholds on judged traces ---------------------------------------------------------


def _attempt(model: str, confidence: float, cost: float, stage: int) -> AttemptView:
    return AttemptView(
        model=model,
        stage=stage,
        answer_key=None,
        reliability=None,
        status="answered",
        confidence=confidence,
        cost_usd=cost,
        judge_cost_usd=0.0,
        judge_scores={"j": confidence},
        judges_failed=[],
    )


def _event(attempts: list[AttemptView], next_model: str | None, next_cost: float) -> DecidedEvent:
    view = CascadeView(
        attempts=attempts,
        next_models=[next_model] if next_model else [],
        next_cost_usd=next_cost if next_model else None,
        n_options=0,
    )
    return DecidedEvent(
        model=attempts[-1]["model"],
        status="answered",
        confidence=attempts[-1]["confidence"],
        threshold=1.0,
        judge_costs={"j": 0.0},
        decision="escalate" if next_model else "exhausted",
        reason="",
        spent_usd=sum(a["cost_usd"] for a in attempts),
        view=view,
    )


def _traces(conf: list[tuple[float, float]], right: list[tuple[float, float]]) -> JudgedTraces:
    """Two-level never-stop traces: "cheap" ($1) then "strong" ($2)."""
    queries = []
    for i, ((c1, c2), (r1, r2)) in enumerate(zip(conf, right, strict=True)):
        first = _attempt("cheap", c1, 1.0, 0)
        second = _attempt("strong", c2, 2.0, 1)
        events = (_event([first], "strong", 2.0), _event([first, second], None, 0.0))
        queries.append(QueryTrace(f"q{i}", events, {"cheap": r1, "strong": r2}))
    return JudgedTraces(("j",), tuple(queries))


def test_thresholds_by_goal() -> None:
    rng = np.random.default_rng(9)
    n = 400
    # Level 1 is cheap and right when its confidence is high; level 2 is right 90%.
    c1 = rng.random(n)
    right1 = (rng.random(n) < c1).astype(float)
    right2 = (rng.random(n) < 0.9).astype(float)
    c2 = np.full(n, 0.9)
    traces = _traces(list(zip(c1, c2, strict=True)), list(zip(right1, right2, strict=True)))
    views = traces.views()
    base = PolicySettings(threshold=0.5, max_levels=2)
    curve = threshold_curve(traces, views, base)
    # Every threshold stops at the first level that clears it, else calls both.
    at_half = next(r for r in curve if r.threshold == pytest.approx(np.unique(c1)[0]))
    assert at_half.levels.max() <= 2

    def select(goal: Goal):  # type: ignore[no-untyped-def]
        return select_threshold(traces, views, goal, base)

    target = select(Goal("target_accuracy", 0.75))
    assert target.met and target.result.accuracy >= 0.75
    # The cheapest point that reaches the target: every cheaper point misses it.
    cheaper = [r for r in curve if r.cost_per_1k < target.result.cost_per_1k - 1e-9]
    assert all(r.accuracy < 0.75 for r in cheaper)
    capped = select(Goal("max_cost_per_1k", 2000.0))
    assert capped.met and capped.result.cost_per_1k <= 2000.0
    assert capped.result.accuracy == max(r.accuracy for r in curve if r.cost_per_1k <= 2000.0)
    rate = select(Goal("max_escalation_rate", 0.25))
    assert rate.result.escalation_rate <= 0.25
    # Out of reach: the most accurate point, flagged.
    unreachable = select(Goal("target_accuracy", 0.999))
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
