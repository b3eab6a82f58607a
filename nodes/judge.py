"""judge: the fan-out target. Every configured judge scores the latest answer in parallel."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from langgraph.runtime import Runtime
from langgraph.types import Send
from typing_extensions import TypedDict

from emafusion.graph.context import Context
from emafusion.graph.state import JudgeTask, JudgeVerdict, RouterState
from emafusion.nodes.judges import get_judge
from emafusion.nodes.resources import load_resources


class JudgeInput(TypedDict):
    judge_task: JudgeTask


def fan_out_judges(state: RouterState, runtime: Runtime[Context]) -> list[Send] | str:
    """After a model answered: one Send per judge. After a failure: straight on."""
    context = runtime.context or Context()
    attempts = state.get("attempts", [])
    latest = attempts[-1]
    if latest["status"] != "answered" or not context.judges:
        return "decide"
    index = len(attempts) - 1
    candidate = state["candidates"][index]
    earlier = [a["answer"] or "" for a in attempts[:-1] if a["status"] == "answered"]
    return [
        Send(
            "judge",
            JudgeInput(
                judge_task=JudgeTask(
                    judge=name,
                    attempt=index,
                    query=state["query"],
                    record_id=state.get("record_id"),
                    category=state.get("category"),
                    model=latest["model"],
                    answer=latest["answer"] or "",
                    p_success=candidate["p_success"],
                    earlier_answers=earlier,
                    query_vector=state.get("query_vector"),
                )
            ),
        )
        for name in context.judges
    ]


async def judge(state: JudgeInput, runtime: Runtime[Context]) -> dict[str, Any]:
    context = runtime.context or Context()
    task = state["judge_task"]
    resources = await asyncio.to_thread(load_resources, context)
    started = time.perf_counter()
    try:
        result = await get_judge(task["judge"]).score(task, resources, context)
        score = result.score
        cost, detail = result.cost_usd, result.detail
    except Exception as exc:  # noqa: BLE001 - a broken judge abstains; the run goes on
        score, cost, detail = None, 0.0, f"judge failed: {type(exc).__name__}: {exc}"
    verdict = JudgeVerdict(
        judge=task["judge"],
        attempt=task["attempt"],
        score=score,
        cost_usd=cost,
        detail=detail,
        latency_ms=(time.perf_counter() - started) * 1000.0,
    )
    return {"verdicts": [verdict]}
