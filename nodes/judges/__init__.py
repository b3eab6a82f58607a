"""The judge interface and registry.

A judge scores one answer: a confidence in [0, 1] that it is right, with what judging
cost. Judges register by name; `Context.judges` selects them, and the graph fans out to
each through `Send` without knowing which exist. A new judge (an LLM judge, a learned
verifier) is a class with `name` and `score`, registered here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from emafusion.graph.context import Context
from emafusion.graph.state import JudgeTask

if TYPE_CHECKING:
    from emafusion.nodes.resources import RouterResources


@dataclass(frozen=True)
class JudgeResult:
    """A judge's confidence in [0, 1], or None to abstain (nothing to judge by).

    `failed`: the judge could not judge (its model was down, its reply was garbage); unlike
    an abstention, the policy then never trusts the answer (fail closed).
    """

    score: float | None
    cost_usd: float = 0.0
    detail: str = ""
    failed: bool = False

    def __post_init__(self) -> None:
        if self.score is not None and not 0.0 <= self.score <= 1.0:
            raise ValueError(f"judge score must be in [0, 1] or None, got {self.score}")
        if self.failed and self.score is not None:
            raise ValueError("a failed judge gives no score")


class Judge(Protocol):
    name: str

    async def score(
        self, task: JudgeTask, resources: RouterResources, context: Context
    ) -> JudgeResult: ...


_REGISTRY: dict[str, Judge] = {}


def register_judge(judge: Judge) -> Judge:
    _REGISTRY[judge.name] = judge
    return judge


class UnknownJudgeError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def get_judge(name: str) -> Judge:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownJudgeError(
            f"Context.judges: unknown judge {name!r}; registered: "
            f"{', '.join(sorted(_REGISTRY))}. Fix: correct the name, or register the judge "
            f"with register_judge()."
        ) from None


def registered_judges() -> list[str]:
    return sorted(_REGISTRY)


# The built-in judges register themselves; imported last because they import the
# interface above.
from emafusion.nodes.judges import (  # noqa: E402, F401, I001
    agreement,
    answer_format,
    llm,
    prior,
    verifier,
)
