"""record: judged outcomes go back into the memory; the router learns from its traffic.

A judged outcome is what the run believes of an answer (`policy.answer_beliefs`); how much
it counts is measured on held-out labels (`emafusion.stores.judged`). An answer a judge
failed on is never recorded: its confidence says nothing of it. Whether
outcomes reach disk is the deployment's choice (`persist_outcomes`), never a run's; there
they append to the memory's outcome log (compacted by `emafusion memory compact`).

The write is handed to the resources' background writer (`emafusion.stores.record_writer`):
`ainvoke` returns without waiting for it. Every run waits for the writes queued before it
started (`graph.router`), and feedback for those before it, so each sees what came earlier.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from langgraph.runtime import Runtime

from emafusion.graph.context import Context
from emafusion.graph.state import RecordedEvent, RouterState
from emafusion.nodes import settings
from emafusion.nodes.events import emit
from emafusion.nodes.resources import RouterResources
from emafusion.stores.memory import OutcomeRecord
from emafusion.stores.run_ledger import RunEntry


def live_query_id(state: RouterState) -> str:
    if state.get("record_id"):
        return str(state["record_id"])
    return "live/" + hashlib.sha256(state["query"].encode()).hexdigest()[:32]


def memory_predictions(
    state: RouterState, resources: RouterResources
) -> tuple[tuple[str, float, float], ...]:
    """(model, the memory's prediction, the drift offset in it) per answering model, for
    the drift residuals of later feedback: the prediction planning used where the memory
    planned, else the memory's prediction the decision read (`memory_p`; a fixed plan)."""
    answered = [a for a in state.get("attempts", []) if a["status"] == "answered"]
    models = {a["model"] for a in answered}
    out = {
        c["model"]: (c["model"], c["p_success"], resources.drift.offset(c["model"]))
        for c in state.get("options", [])
        if c["model"] in models and c["source"] in ("memory", "prior")
    }
    for a in answered:
        if a["model"] not in out and a.get("memory_p") is not None:
            out[a["model"]] = (a["model"], float(a["memory_p"]), 0.0)
    return tuple(out.values())


def judged_outcomes(
    state: RouterState, context: Context, resources: RouterResources
) -> list[OutcomeRecord]:
    """What the run believes of each answer, as judged outcomes (none when not recording).

    Where the router measured its judges (`resources.judged`), beliefs are stored through
    its calibration map, and only for runs judged the way it measured: another
    configuration's beliefs have no measured weight, and the memory applies one weight to
    every judged outcome. Without a measurement they are stored as they are and count for
    nothing (`MemorySettings.judged_weight` 0).
    """
    evidence = resources.judged
    if not context.record_outcomes or (evidence is not None and not evidence.matches(context)):
        return []
    attempts = state.get("attempts", [])
    beliefs = state.get("answer_beliefs") or [a["confidence"] for a in attempts]
    outcomes = []
    for attempt, belief in zip(attempts, beliefs, strict=True):
        if attempt["status"] != "answered" or belief is None or attempt["judges_failed"]:
            continue
        score = evidence.calibrated(belief) if evidence is not None else float(belief)
        outcomes.append(
            OutcomeRecord(
                model=attempt["model"],
                score=score,
                source="live_judged",
                cost_usd=attempt["cost_usd"],
                latency_s=attempt["latency_ms"] / 1000.0,
            )
        )
    return outcomes


async def record(
    state: RouterState, runtime: Runtime[Context], resources: RouterResources
) -> dict[str, Any]:
    context = settings.current(state, runtime)
    if "query_vector" not in state:
        return {}
    query_id = live_query_id(state)
    vector = np.asarray(state["query_vector"], dtype=np.float32)
    category = state.get("category")
    attempts = state.get("attempts", [])
    answered = [a for a in attempts if a["status"] == "answered"]
    answered_models = tuple(a["model"] for a in answered)
    entry = RunEntry(
        run_id=state.get("run_id", ""),
        query_id=query_id,
        vector=tuple(float(x) for x in state["query_vector"]),
        category=category,
        model=state.get("model"),
        models=answered_models,
        predicted=memory_predictions(state, resources),
        tested=resources.judged is not None and resources.judged.matches(context),
    )
    outcomes = judged_outcomes(state, context, resources)
    # Judged beliefs feed the drift test of the plan they were measured on (`judged_outcomes`
    # is empty for any other judging or plan), where they carry evidence.
    weight = resources.judged.weight if resources.judged is not None else 0.0
    raw = {model: p - offset for model, p, offset in entry.predicted}
    residuals = [
        (o.model, o.score, raw[o.model]) for o in outcomes if weight > 0 and o.model in raw
    ]

    memory = resources.memory  # the memory of this run, even if it is swapped meanwhile

    def write() -> None:
        # Feedback on this run may come later: the ledger knows what it needs.
        resources.runs.add(entry)
        for model, belief, predicted in residuals:
            resources.drift.observe_judged(model, belief, predicted)
        if not outcomes:
            return
        if resources.persist_outcomes and memory.location is None and resources.router_dir:
            with resources.memory_lock:  # a memory built in this process: give it a home
                if memory.location is None:
                    memory.save(resources.router_dir / "memory")
        if resources.persist_outcomes and memory.location is not None:
            # One fsynced append to the outcome log that every process shares: O(1), and
            # nothing another process recorded is overwritten.
            memory.append(query_id, vector, outcomes, category)
        else:
            memory.add(query_id, vector, outcomes, category)

    # Off the answer's path: the writer runs it after this run returns; the next run (and
    # feedback) waits for it first (`RouterResources.flush_records`).
    await resources.writer.asubmit(write)
    if not outcomes:
        return {}
    event = emit(
        runtime, "recorded", RecordedEvent(query_id=query_id, models=[o.model for o in outcomes])
    )
    return {"trace": [event]}
