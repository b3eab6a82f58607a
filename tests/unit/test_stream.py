"""The stream replay on the synthetic world: a fixed order without train; feedback becomes
ground truth in the memory; the static run records nothing; drift degrades only the named
model, only from T on; the command writes its table, JSON and plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emafusion.cli.main import main
from emafusion.evals.stream import StreamRun, StreamSettings, replay, run_scenario, stream_order
from emafusion.evals.stream_report import markdown, summary
from emafusion.evals.stream_worlds import degrade, serve_degraded
from emafusion.graph import Context, make_graph
from emafusion.nodes import resources as resources_module
from emafusion.nodes.resources import RouterResources
from emafusion.stores.embeddings import HashEmbedder
from emafusion.stores.recordings import RecordSet
from tests import synthetic


async def _synthetic_run(records: RecordSet, settings: StreamSettings) -> StreamRun:
    return await run_scenario(
        lambda: synthetic.make_resources(records),
        records,
        synthetic.make_pool(),
        settings,
        log=lambda _: None,
    )


def test_the_order_is_fixed_by_the_seed_and_never_holds_train(
    synthetic_records: RecordSet,
) -> None:
    pool = synthetic.make_pool()
    first = [r.id for r in stream_order(synthetic_records, pool, seed=3)]
    reversed_set = RecordSet("synthetic", synthetic_records.records[::-1], source="reversed")
    assert [r.id for r in stream_order(reversed_set, pool, seed=3)] == first
    assert [r.id for r in stream_order(synthetic_records, pool, seed=4)] != first
    splits = {synthetic_records.get(i).split for i in first}  # type: ignore[union-attr]
    assert splits == {"validation", "test"}
    expected = {r.id for r in synthetic_records.split("validation", "test")}
    assert set(first) == expected and len(first) == len(expected)
    assert [r.id for r in stream_order(synthetic_records, pool, seed=3, limit=7)] == first[:7]


async def test_full_feedback_leaves_ground_truth_for_every_answer(
    tiny_resources: RouterResources, synthetic_records: RecordSet
) -> None:
    stream = stream_order(synthetic_records, synthetic.make_pool(), limit=40)
    steps = await replay(tiny_resources, stream, Context(record_outcomes=True), feedback=1.0)
    answered = [s for s in steps if s.model is not None]
    assert answered and all(s.feedback for s in answered)
    for step in answered:
        stored = tiny_resources.memory.get(step.record_id)
        assert stored is not None
        truth = stored.ground_truth[step.model]  # type: ignore[index]
        recorded = synthetic_records.get(step.record_id).outcomes[step.model]  # type: ignore
        assert truth.source == "user_feedback" and truth.score == recorded.score
        assert truth.score == step.correct


async def test_judged_only_learning_records_judged_outcomes(
    tiny_resources: RouterResources, synthetic_records: RecordSet
) -> None:
    stream = stream_order(synthetic_records, synthetic.make_pool(), limit=20)
    steps = await replay(tiny_resources, stream, Context(record_outcomes=True), feedback=0.0)
    assert not any(s.feedback for s in steps)
    stored = [tiny_resources.memory.get(s.record_id) for s in steps if s.model]
    assert stored and all(q is not None and q.judged and not q.ground_truth for q in stored)


def test_drift_degrades_only_the_named_model_after_t(synthetic_records: RecordSet) -> None:
    stream = stream_order(synthetic_records, synthetic.make_pool())
    t = len(stream) // 3
    degraded, ids = degrade(stream, "large", t, share=0.5, seed=0)
    right_after_t = [r for r in stream[t:] if r.outcomes["large"].score == 1.0]
    assert 0.3 * len(right_after_t) < len(ids) < 0.7 * len(right_after_t)  # about half
    for i, (old, new) in enumerate(zip(stream, degraded, strict=True)):
        for model in old.outcomes:
            if model == "large" and old.id in ids:
                assert i >= t and old.outcomes[model].score == 1.0
                assert new.outcomes[model].score == 0.0
                assert new.outcomes[model].response != old.outcomes[model].response
                assert new.outcomes[model].cost_usd == old.outcomes[model].cost_usd
            else:
                assert new.outcomes[model] == old.outcomes[model]
    assert degrade(stream, "large", t, 0.5, seed=0)[1] == ids  # seeded


async def test_the_degraded_model_answers_the_wrong_recording(
    tiny_resources: RouterResources, synthetic_records: RecordSet
) -> None:
    stream = stream_order(synthetic_records, synthetic.make_pool())
    degraded, ids = degrade(stream, "large", 0, share=1.0)
    serve_degraded(tiny_resources, "large", degraded)
    record = next(r for r in degraded if r.id in ids)
    context = Context(stages={"*": [["large"]]}, record_outcomes=False)
    output = await make_graph(tiny_resources).ainvoke(
        {"query": record.query, "record_id": record.id}, context=context
    )
    assert output["model"] == "large"
    assert output["answer"] == record.outcomes["large"].response
    original = synthetic_records.get(record.id)
    assert original is not None and output["answer"] != original.outcomes["large"].response
    # The other models still answer what they recorded.
    small = await make_graph(tiny_resources).ainvoke(
        {"query": record.query, "record_id": record.id},
        context=Context(stages={"*": [["small"]]}, record_outcomes=False),
    )
    assert small["answer"] == original.outcomes["small"].response


async def test_a_drift_scenario_compares_both_runs_on_one_stream(
    synthetic_records: RecordSet,
) -> None:
    settings = StreamSettings(scenario="drift", feedback=0.5, window=40, drift_model="large")
    run = await _synthetic_run(synthetic_records, settings)
    assert run.static_memory_unchanged
    assert run.memory_after > run.memory_before
    assert [s.record_id for s in run.static] == [s.record_id for s in run.learning]
    assert run.drift_at == len(run.stream) // 3
    results = summary(run)
    assert results["drift"]["model"] == "large" and results["drift"]["degraded_queries"] > 0
    assert sum(w["end"] - w["start"] for w in results["windows"]) == len(run.stream)
    # Degraded answers are scored wrong: no run beats the degraded recordings' oracle.
    assert results["oracle"]["accuracy"] >= results["learning"]["accuracy"]
    table = markdown(results)
    assert "large share learning" in table and "Drift: large" in table


def test_bad_settings_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="scenario 'lukewarm'"):
        StreamSettings(scenario="lukewarm")
    with pytest.raises(ValueError, match=r"feedback must be a share in \[0, 1\]"):
        StreamSettings(feedback=1.5)


def test_the_command_writes_table_json_and_plot(
    tmp_path: Path,
    synthetic_records: RecordSet,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(resources_module, "default_embedder", lambda: HashEmbedder())
    recordings, pool = synthetic.write_deployment_files(tmp_path, synthetic_records)
    router = tmp_path / "router"  # none there: built from train in a temporary directory
    argv = ["stream", "--recordings", str(recordings), "--pool", str(pool)]
    argv += ["--router-dir", str(router), "--out", str(tmp_path / "out"), "--window", "50"]
    assert main([*argv, "--scenario", "warm", "--feedback", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "| queries | learning acc | static acc |" in out
    assert not router.exists()  # the user's router directory is never written
    results = json.loads((tmp_path / "out" / "warm-feedback-0.2.json").read_text())
    assert results["static_memory_unchanged"] and results["feedback_sent"] > 0
    assert (tmp_path / "out" / "warm-feedback-0.2.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "out" / "warm-feedback-0.2.md").read_text().startswith("# Stream")


async def test_a_new_model_joins_at_t_with_no_history(synthetic_records: RecordSet) -> None:
    settings = StreamSettings(scenario="new-model", window=40, feedback=0.5)
    run = await _synthetic_run(synthetic_records, settings)
    assert run.new_model == "large"  # the most accurate on train
    t = run.drift_at
    assert t == len(run.stream) // 3
    for steps in (run.static, run.learning):
        assert all(s.model != "large" for s in steps[:t])  # out of the pool before T
    assert run.static_memory_unchanged and run.memory_after > run.memory_before
    results = summary(run)
    assert results["new_model"]["model"] == "large"
    assert "New model: large joined" in markdown(results)
    # The warm reference had it from the start; the target compares the share after T.
    assert run.reference is not None and any(s.model == "large" for s in run.reference[:t])
    target = results["new_model_target"]
    assert target["share_warm"] > 0 and 0 <= target["share_learning"] <= 1
    assert "in the warm run" in markdown(results)


async def test_cold_starts_from_an_empty_memory_and_learns_from_feedback(
    synthetic_records: RecordSet,
) -> None:
    settings = StreamSettings(scenario="cold", window=40, feedback=1.0)
    run = await _synthetic_run(synthetic_records, settings)
    assert run.memory_before == 0 and run.memory_after > 0
    assert run.static_memory_unchanged
    assert run.reference is not None and len(run.reference) == len(run.stream)
    results = summary(run)
    cold = results["cold"]
    assert cold["after_queries"] == 300 and len(cold["windows"]) == len(results["windows"])
    assert "Cold vs warm" in markdown(results)


async def test_an_unseen_category_is_withheld_from_memory_and_classifier(
    synthetic_records: RecordSet,
) -> None:
    settings = StreamSettings(
        scenario="unseen-category",
        window=40,
        feedback=0.5,
        category="history",
        context={"novel_queries": "strongest"},
    )
    made: list[RouterResources] = []

    def make() -> RouterResources:
        made.append(synthetic.make_resources(synthetic_records))
        return made[-1]

    run = await run_scenario(
        make, synthetic_records, synthetic.make_pool(), settings, log=lambda _: None
    )
    static = made[0]
    assert "history" not in static.classifier.categories
    assert all(
        static.memory.get(q) is not None and static.memory.get(q).category != "history"  # type: ignore[union-attr]
        for q in static.memory.query_ids
    )
    assert run.withheld == "history"
    results = summary(run)
    unseen = results["unseen_category"]
    assert unseen["queries"] == sum(1 for r in run.stream if r.category == "history")
    assert unseen["strongest"] == "large"
    # Its queries are unlike every stored one: the static router (it never learns) sends
    # each to the strongest model, as the run setting says.
    withheld = [s for r, s in zip(run.stream, run.static, strict=True) if r.category == "history"]
    assert withheld and all(s.model == "large" for s in withheld)
    others = [s for r, s in zip(run.stream, run.static, strict=True) if r.category != "history"]
    assert any(s.model != "large" for s in others)
    assert "Unseen category `history`" in markdown(results)


def test_without_a_model_the_memory_has_no_history_of_it(
    tiny_resources: RouterResources, synthetic_records: RecordSet
) -> None:
    from emafusion.evals.stream_worlds import without_model

    full = without_model(tiny_resources, synthetic_records, "large")
    assert "large" in full.names and "large" not in tiny_resources.pool.names
    memory = tiny_resources.memory
    assert len(memory) == len(synthetic_records.split("train"))
    for query_id in memory.query_ids[:50]:
        stored = memory.get(query_id)
        assert stored is not None and "large" not in stored.outcomes


async def test_the_static_run_records_nothing(
    tiny_resources: RouterResources, synthetic_records: RecordSet
) -> None:
    before = len(tiny_resources.memory)
    stream = stream_order(synthetic_records, synthetic.make_pool(), limit=30)
    steps = await replay(tiny_resources, stream, Context(record_outcomes=False))
    assert any(s.model for s in steps)
    assert len(tiny_resources.memory) == before
    assert all(s.record_id not in tiny_resources.memory for s in steps)


async def test_an_unknown_withheld_category_is_a_clear_error(
    synthetic_records: RecordSet,
) -> None:
    settings = StreamSettings(scenario="unseen-category", category="astrology", window=40)
    with pytest.raises(ValueError, match="category 'astrology' is not in the stream"):
        await _synthetic_run(synthetic_records, settings)
