"""Did the response commit to a final answer its task type can use?"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from emafusion.graph.context import Context
from emafusion.graph.state import JudgeTask
from emafusion.nodes.judges import JudgeResult, register_judge
from emafusion.stores.answers import LETTERS, extract_choice, option_count

if TYPE_CHECKING:
    from emafusion.nodes.resources import RouterResources

_REFUSAL = re.compile(
    r"\b(I can(?:no|')t (?:help|answer|assist)|I am unable to|as an AI language model)\b",
    re.IGNORECASE,
)


class AnswerFormatJudge:
    name = "answer_format"

    async def score(
        self, task: JudgeTask, resources: RouterResources, context: Context
    ) -> JudgeResult:
        answer = task["answer"] or ""
        n_options = option_count(task["query"])
        if n_options:
            choice = extract_choice(answer, n_options)
            if choice is None:
                return JudgeResult(0.0, detail=f"no option among A-{LETTERS[n_options - 1]}")
            return JudgeResult(1.0, detail=f"chose {choice}")
        if not answer.strip():
            return JudgeResult(0.0, detail="empty answer")
        if _REFUSAL.search(answer):
            return JudgeResult(0.1, detail="refusal")
        return JudgeResult(1.0, detail="free-form answer present")


register_judge(AnswerFormatJudge())
