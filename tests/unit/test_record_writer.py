"""Recording off the answer's path: `ainvoke` returns before the write, the write is visible
after `flush_records()`, each run and feedback sees the writes before it, a failed write is
logged (redacted) and counted, and nothing queued is lost at exit."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from emafusion.graph import Context, make_graph
from emafusion.nodes.feedback import submit_feedback
from emafusion.nodes.resources import RouterResources
from emafusion.stores.record_writer import RecordWriter
from emafusion.stores.recordings import Record, RecordSet

RECORD = Context(record_outcomes=True)


def _inputs(record: Record) -> dict[str, Any]:
    return {"query": record.query, "record_id": record.id}


def _gate_memory_add(
    resources: RouterResources, monkeypatch: pytest.MonkeyPatch
) -> tuple[threading.Event, threading.Event]:
    """(release, written): memory.add waits for `release`, then sets `written`."""
    release, written = threading.Event(), threading.Event()
    real: Callable[..., Any] = resources.memory.add

    def slow_add(*args: Any, **kwargs: Any) -> Any:
        assert release.wait(10), "the test never released the write"
        out = real(*args, **kwargs)
        written.set()
        return out

    monkeypatch.setattr(resources.memory, "add", slow_add)
    return release, written


# --- the writer alone -----------------------------------------------------------------------


def test_jobs_run_in_order_and_flush_waits_for_them() -> None:
    writer = RecordWriter(idle_exit_s=0.05)
    done: list[int] = []

    def job(i: int) -> Callable[[], None]:
        return lambda: (time.sleep(0.002), done.append(i))[-1]

    for i in range(50):
        writer.submit(job(i))
    assert writer.flush(5) and done == list(range(50)) and writer.pending == 0
    time.sleep(0.2)  # the idle thread has ended; a new job starts another
    writer.submit(lambda: done.append(50))
    assert writer.flush(5) and done[-1] == 50


def test_a_failed_write_is_logged_redacted_counted_and_the_next_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    writer = RecordWriter()
    done: list[str] = []

    def broken() -> None:
        raise OSError("disk full writing for key sk-abcdefghijklmnop")

    with caplog.at_level(logging.ERROR):
        writer.submit(broken)
        writer.submit(lambda: done.append("after"))
        assert writer.flush(5)
    assert writer.failed == 1 and done == ["after"]
    assert writer.last_error is not None and "disk full" in writer.last_error
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "recording outcomes failed" in messages and "OSError" in messages
    assert "sk-abcdefghijklmnop" not in messages and "sk-abcdefghijklmnop" not in writer.last_error


def test_a_full_queue_makes_the_submitter_wait_and_flush_can_time_out() -> None:
    writer = RecordWriter(capacity=1)
    release = threading.Event()
    writer.submit(lambda: release.wait(5) and None)
    writer.submit(lambda: None)  # queued: the queue is now full
    assert not writer.flush(0.05)  # the first job still runs
    threading.Timer(0.1, release.set).start()
    started = time.monotonic()
    writer.submit(lambda: None)  # waits for room
    assert time.monotonic() - started >= 0.05
    assert writer.flush(5) and writer.pending == 0


def test_flush_from_a_job_does_not_wait_for_itself() -> None:
    writer = RecordWriter()
    flushed: list[bool] = []
    writer.submit(lambda: flushed.append(writer.flush(1)))
    assert writer.flush(5) and flushed == [True]


async def test_inline_runs_each_write_before_asubmit_returns() -> None:
    writer = RecordWriter(background=False)
    done: list[int] = []
    await writer.asubmit(lambda: done.append(1))
    assert done == [1] and writer.pending == 0


def test_what_is_queued_at_exit_is_written(tmp_path: Path) -> None:
    out = tmp_path / "written"
    script = (
        "import time\n"
        "from pathlib import Path\n"
        "from emafusion.stores.record_writer import RecordWriter\n"
        "w = RecordWriter()\n"
        f"w.submit(lambda: (time.sleep(0.3), Path({str(out)!r}).write_text('ok')))\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert out.read_text() == "ok"


# --- in the graph ---------------------------------------------------------------------------


async def test_ainvoke_returns_before_the_write_and_flush_makes_it_visible(
    tiny_resources: RouterResources,
    synthetic_records: RecordSet,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    release, written = _gate_memory_add(tiny_resources, monkeypatch)
    record = synthetic_records.split("test")[0]
    result = await asyncio.wait_for(
        make_graph(tiny_resources).ainvoke(_inputs(record), context=RECORD), 30
    )
    # The answer is back while the write is still held.
    assert result["answer"] and not written.is_set() and tiny_resources.writer.pending == 1
    release.set()
    assert tiny_resources.flush_records(10)
    stored = tiny_resources.memory.get(record.id)
    assert stored is not None and stored.outcomes[result["model"]].source == "live_judged"


async def test_the_answer_streams_before_the_write(
    tiny_resources: RouterResources,
    synthetic_records: RecordSet,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    release, written = _gate_memory_add(tiny_resources, monkeypatch)
    record = synthetic_records.split("test")[1]
    seen: list[tuple[str, bool]] = []
    async for mode, payload in make_graph(tiny_resources).astream(
        _inputs(record), context=RECORD, stream_mode=["custom", "values"]
    ):
        if mode == "custom":
            seen.append((payload["emafusion"], written.is_set()))
        elif payload.get("answer"):
            seen.append(("answer", written.is_set()))
    assert ("returned", False) in seen and ("answer", False) in seen
    assert not written.is_set()
    release.set()
    assert tiny_resources.flush_records(10) and written.is_set()


async def test_the_next_run_and_feedback_see_the_writes_before_them(
    tiny_resources: RouterResources,
    synthetic_records: RecordSet,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real: Callable[..., Any] = tiny_resources.memory.add

    def slow_add(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.3)
        return real(*args, **kwargs)

    monkeypatch.setattr(tiny_resources.memory, "add", slow_add)
    graph = make_graph(tiny_resources)
    first, second = synthetic_records.split("test")[2:4]
    result = await graph.ainvoke(_inputs(first), context=RECORD)
    assert tiny_resources.writer.pending == 1  # still being written
    # The next run waits at its start for the writes queued before it (no flush here).
    seen_at_start: list[bool] = []
    real_stats = tiny_resources.model_stats

    def stats(category: str | None) -> Any:
        seen_at_start.append(first.id in tiny_resources.memory)
        return real_stats(category)

    monkeypatch.setattr(tiny_resources, "model_stats", stats)
    await graph.ainvoke(_inputs(second), context=RECORD)
    assert seen_at_start and all(seen_at_start)
    # Read outside a run (an evaluation's tally), the memory waits for what is queued.
    fourth = synthetic_records.split("test")[5]
    await graph.ainvoke(_inputs(fourth), context=RECORD)
    assert tiny_resources.writer.pending == 1
    assert fourth.id in tiny_resources.memory and tiny_resources.writer.pending == 0
    # Feedback by run id right after the answer: the run's ledger entry is written first.
    third = synthetic_records.split("test")[4]
    result = await graph.ainvoke(_inputs(third), context=RECORD)
    receipt = submit_feedback(tiny_resources, result["run_id"], 1.0)
    assert receipt.query_id == third.id
    stored = tiny_resources.memory.get(third.id)
    assert stored is not None and stored.ground_truth[result["model"]].score == 1.0


async def test_a_crash_in_the_write_is_reported_not_raised_to_the_caller(
    tiny_resources: RouterResources,
    synthetic_records: RecordSet,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken_add(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("memory store down; api_key=sk-abcdefghijklmnop")

    monkeypatch.setattr(tiny_resources.memory, "add", broken_add)
    record = synthetic_records.split("test")[6]
    with caplog.at_level(logging.ERROR):
        result = await make_graph(tiny_resources).ainvoke(_inputs(record), context=RECORD)
        assert result["answer"]
        assert tiny_resources.flush_records(10)
    assert tiny_resources.writer.failed == 1
    assert "memory store down" in (tiny_resources.writer.last_error or "")
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "recording outcomes failed" in logged and "sk-abcdefghijklmnop" not in logged
    # The ledger entry was written before the memory failed: feedback still finds the run.
    assert tiny_resources.runs.get(result["run_id"]) is not None
