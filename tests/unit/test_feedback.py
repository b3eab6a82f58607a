"""Feedback: a run's output names its id; a score for it becomes ground truth; unknown ids
and bad scores are clear errors; persisted runs take feedback from another process."""

from __future__ import annotations

from pathlib import Path

import pytest

from emafusion.cli.main import main
from emafusion.graph import Context, make_graph
from emafusion.nodes import resources as resources_module
from emafusion.nodes.feedback import FeedbackError, submit_feedback
from emafusion.nodes.resources import RouterResources
from emafusion.stores.embeddings import HashEmbedder
from emafusion.stores.memory import OutcomeMemory
from emafusion.stores.recordings import RecordSet
from emafusion.stores.run_ledger import RunLedger
from tests import synthetic


async def test_feedback_on_a_run_is_ground_truth(
    tiny_resources: RouterResources, synthetic_records: RecordSet
) -> None:
    record = synthetic_records.split("test")[0]
    result = await make_graph(tiny_resources).ainvoke(
        {"query": record.query, "record_id": record.id}, context=Context(record_outcomes=True)
    )
    returned = next(e["data"] for e in result["trace"] if e["event"] == "returned")
    assert returned["run_id"] == result["run_id"]
    receipt = submit_feedback(tiny_resources, result["run_id"], 0.0)
    assert (receipt.query_id, receipt.model, receipt.score) == (record.id, result["model"], 0.0)
    stored = tiny_resources.memory.get(record.id)
    assert stored is not None
    truth = stored.ground_truth[result["model"]]
    assert truth.source == "user_feedback" and truth.score == 0.0
    # A later judged guess does not overwrite what the user said.
    await make_graph(tiny_resources).ainvoke(
        {"query": record.query, "record_id": record.id}, context=Context(record_outcomes=True)
    )
    again = tiny_resources.memory.get(record.id)
    assert again is not None and again.ground_truth[result["model"]].score == 0.0


def test_unknown_ids_and_bad_scores_are_clear_errors(tiny_resources: RouterResources) -> None:
    with pytest.raises(FeedbackError, match="unknown run_id 'nope'"):
        submit_feedback(tiny_resources, "nope", 1.0)
    with pytest.raises(FeedbackError, match="unknown query_id 'nowhere'"):
        submit_feedback(tiny_resources, query_id="nowhere", score=1.0, model="tiny")
    with pytest.raises(FeedbackError, match=r"in \[0, 1\]"):
        submit_feedback(tiny_resources, "nope", 1.5)
    with pytest.raises(FeedbackError, match="exactly one"):
        submit_feedback(tiny_resources, "a", 1.0, query_id="b")
    known = tiny_resources.memory.query_ids[0]
    with pytest.raises(FeedbackError, match="not in the pool"):
        submit_feedback(tiny_resources, query_id=known, score=1.0, model="gpt-9")
    receipt = submit_feedback(tiny_resources, query_id=known, score=1.0, model="tiny")
    assert receipt.query_id == known and not receipt.durable


def test_the_cli_scores_a_persisted_run(
    tmp_path: Path,
    synthetic_records: RecordSet,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(resources_module, "default_embedder", lambda: HashEmbedder())
    recordings, pool = synthetic.write_deployment_files(tmp_path, synthetic_records)
    router = tmp_path / "router"
    record = synthetic_records.split("test")[2]
    common = ["--recordings", str(recordings), "--pool", str(pool), "--router-dir", str(router)]
    assert main(["ask", *common, "--record-id", record.id, "--save-memory"]) == 0
    out = capsys.readouterr().out
    run_id = next(line.split()[2] for line in out.splitlines() if line.startswith("run id:"))
    assert RunLedger(router).get(run_id) is not None  # another process can find it
    assert main(["feedback", *common, "--run-id", run_id, "--score", "1"]) == 0
    assert "ground truth, appended to the outcome log" in capsys.readouterr().out
    memory = OutcomeMemory.load(router / "memory")
    stored = memory.get(record.id)
    assert stored is not None
    assert any(o.source == "user_feedback" for o in stored.ground_truth.values())
    assert main(["feedback", *common, "--run-id", "missing", "--score", "1"]) == 2
    assert "unknown run_id 'missing'" in capsys.readouterr().err
