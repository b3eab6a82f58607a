"""judge: the fan-out target. Every configured judge scores each new answer in parallel.

A judge that raises, or returns something that is not a score, is a failed verdict: the
decision policy never trusts the answer on it (fail closed), and it is never recorded.
"""

from __future__ import annotations

import time
from typing import Any

from langgraph.runtime import Runtime
from langgraph.types import Send
from typing_extensions import TypedDict

from emafusion.graph.context import Context
from emafusion.graph.state import JudgeTask, JudgeVerdict, RouterState
from emafusion.nodes import settings
from emafusion.nodes.judges import get_judge
from emafusion.nodes.resources import RouterResources
from emafusion.stores.redaction import redact


class JudgeInput(TypedDict):
    judge_task: JudgeTask
    settings: dict[str, Any]


def fan_out_judges(state: RouterState, runtime: Runtime[Context]) -> list[Send] | str:
    """After a stage: one Send per (new answer, judge). Nothing answered: straight on."""
    context = settings.current(state, runtime)
    attempts = state.get("attempts", [])
    stage = attempts[-1]["stage"]
    fresh = [a for a in attempts if a["stage"] == stage and a["status"] == "answered"]
    if not fresh or not context.judges:
        return "decide"
    candidates = state["candidates"]
    sends = []
    for attempt in fresh:
        earlier = [
            a["answer"] or ""
            for a in attempts
            if a["index"] < attempt["index"] and a["status"] == "answered"
        ]
        task = JudgeTask(
            judge="",
            attempt=attempt["index"],
            query=state["query"],
            record_id=state.get("record_id"),
            category=state.get("category"),
            model=attempt["model"],
            answer=attempt["answer"] or "",
            p_success=candidates[attempt["index"]]["p_success"],
            earlier_answers=earlier,
            query_vector=state.get("query_vector"),
        )
        sends += [
            Send(
                "judge",
                JudgeInput(
                    judge_task=JudgeTask(**{**task, "judge": name}),
                    settings=state.get("settings") or context.model_dump(mode="json"),
                ),
            )
            for name in context.judges
        ]
    return sends


def gather(state: RouterState) -> dict[str, Any]:
    """Where a stage's parallel calls meet before their answers are judged."""
    return {}


async def judge(
    state: JudgeInput, runtime: Runtime[Context], resources: RouterResources
) -> dict[str, Any]:
    context = settings.current(state, runtime)
    task = state["judge_task"]
    started = time.perf_counter()
    failed = False
    try:
        result = await get_judge(task["judge"]).score(task, resources, context)
        score, cost, detail = result.score, result.cost_usd, result.detail
        failed = result.failed
    except Exception as exc:  # noqa: BLE001 - a broken judge fails closed; the run goes on
        score, cost, failed = None, 0.0, True
        detail = redact(f"judge failed: {type(exc).__name__}: {exc}")[:300]
    verdict = JudgeVerdict(
        judge=task["judge"],
        attempt=task["attempt"],
        score=score,
        cost_usd=cost,
        detail=detail,
        latency_ms=(time.perf_counter() - started) * 1000.0,
        failed=failed,
    )
    return {"verdicts": [verdict]}
