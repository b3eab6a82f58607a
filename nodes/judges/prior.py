"""The memory's predicted success of the answering model on this query."""

from __future__ import annotations

from typing import TYPE_CHECKING

from emafusion.graph.context import Context
from emafusion.graph.state import JudgeTask
from emafusion.nodes.judges import JudgeResult, register_judge

if TYPE_CHECKING:
    from emafusion.nodes.resources import RouterResources


class MemoryPriorJudge:
    name = "memory_prior"

    async def score(
        self, task: JudgeTask, resources: RouterResources, context: Context
    ) -> JudgeResult:
        # The prediction was made before the call (predict or classify); the answer itself
        # does not change it, so this judge costs nothing and reads no text.
        p = min(1.0, max(0.0, task["p_success"]))
        return JudgeResult(score=p, detail=f"predicted success of {task['model']}: {p:.3f}")


register_judge(MemoryPriorJudge())
