"""Do earlier attempts' answers agree with this one?

Two models that reach the same final answer independently are more often right than either
alone. For multiple choice the chosen letters are compared; otherwise the normalized texts
(case, punctuation and spacing ignored), with word overlap as partial agreement. Abstains on
the first attempt, or when no earlier answer committed to anything comparable.
"""

from __future__ import annotations

import re
import string
from typing import TYPE_CHECKING

from emafusion.graph.context import Context
from emafusion.graph.state import JudgeTask
from emafusion.nodes.judges import JudgeResult, register_judge
from emafusion.stores.answers import extract_choice, option_count

if TYPE_CHECKING:
    from emafusion.nodes.resources import RouterResources

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_SPACES = re.compile(r"\s+")


def normalize_answer(text: str) -> str:
    return _SPACES.sub(" ", text.lower().translate(_PUNCTUATION)).strip()


def text_agreement(a: str, b: str) -> float:
    """1.0 for the same normalized text, else the Jaccard overlap of their words."""
    na, nb = normalize_answer(a), normalize_answer(b)
    if not na or not nb:
        return 0.0
    if na == nb:
        return 1.0
    wa, wb = set(na.split()), set(nb.split())
    return len(wa & wb) / len(wa | wb)


def agreement_with(answer: str, others: list[str], query: str) -> JudgeResult:
    """How far `answer` agrees with the `others` (abstains when nothing is comparable)."""
    earlier = [a for a in others if a and a.strip()]
    if not earlier:
        return JudgeResult(None, detail="no earlier answer to compare with")
    n_options = option_count(query)
    if n_options:
        letters = [extract_choice(a, n_options) for a in earlier]
        comparable = [letter for letter in letters if letter is not None]
        if not comparable:
            return JudgeResult(None, detail="no earlier answer chose an option")
        mine = extract_choice(answer, n_options)
        agree = sum(1 for letter in comparable if letter == mine) if mine else 0
        return JudgeResult(
            agree / len(comparable),
            detail=f"chose {mine or 'nothing'}; earlier chose {', '.join(comparable)}",
        )
    if not answer.strip():
        return JudgeResult(0.0, detail="empty answer")
    overlaps = [text_agreement(answer, a) for a in earlier]
    return JudgeResult(
        sum(overlaps) / len(overlaps),
        detail="text agreement with earlier answers: " + ", ".join(f"{o:.2f}" for o in overlaps),
    )


class AgreementJudge:
    name = "agreement"

    async def score(
        self, task: JudgeTask, resources: RouterResources, context: Context
    ) -> JudgeResult:
        return agreement_with(task["answer"] or "", task["earlier_answers"], task["query"])


register_judge(AgreementJudge())
