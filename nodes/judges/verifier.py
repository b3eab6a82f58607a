"""The learned verifier: P(this model's answer to this query is right), from recordings.

Trained by `emafusion judges train` and loaded from the router directory; see
`emafusion.stores.verifier` for its features. Abstains when none was trained or the model
is one it never saw answer.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import numpy as np

from emafusion.graph.context import Context
from emafusion.graph.state import JudgeTask
from emafusion.nodes.judges import JudgeResult, register_judge
from emafusion.stores.recordings import routing_text
from emafusion.stores.verifier import Pairs

if TYPE_CHECKING:
    from emafusion.nodes.resources import RouterResources


class VerifierJudge:
    name = "verifier"

    async def score(
        self, task: JudgeTask, resources: RouterResources, context: Context
    ) -> JudgeResult:
        verifier = resources.verifier
        if verifier is None:
            return JudgeResult(
                None,
                detail="no learned verifier in the router directory. Fix: run `emafusion judges "
                "train --dataset NAME` (or drop 'verifier' from Context.judges)",
            )
        if not verifier.knows(task["model"]):
            return JudgeResult(None, detail=f"verifier never saw {task['model']} answer")
        stored = task.get("query_vector")
        if stored is not None:
            vector = np.asarray(stored, dtype=np.float32)[None, :]
        else:
            # A caller that skipped classify: embed here rather than judge without the query.
            text = routing_text(task["query"])
            vector = await asyncio.to_thread(resources.embedder.embed, [text])
        pairs = Pairs(np.zeros(1, np.int64), [task["query"]], [task["model"]], [task["answer"]])
        p = float(verifier.score(resources.memory, vector, pairs)[0])
        return JudgeResult(p, detail=f"verifier: {p:.3f} that {task['model']} is right")


register_judge(VerifierJudge())
