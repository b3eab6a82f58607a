"""An agent that calls the router as one of its nodes.

The parent graph speaks messages; the router speaks queries. The `ask_router` node maps
one to the other, so nothing of the router's private state (its candidates, attempts,
judge verdicts, trace) reaches the parent, and the answer arrives as one AI message.

    EMAFUSION_POOL=my-pool.toml python examples/agent.py "Which gas do plants absorb?"

(a pool of live models; the default replay pool answers only recorded queries)
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from typing_extensions import TypedDict

from emafusion.graph import Context, graph


class AgentState(MessagesState):
    routed_by: list[str]


class AgentOutput(TypedDict):
    messages: list[Any]
    routed_by: list[str]


def build_agent(router: CompiledStateGraph) -> CompiledStateGraph:
    """An agent whose one node asks `router` (any compiled emafusion graph)."""

    async def ask_router(state: AgentState, runtime: Runtime[Context]) -> dict[str, Any]:
        question = next(m for m in reversed(state["messages"]) if isinstance(m, HumanMessage))
        result = await router.ainvoke({"query": question.text}, context=runtime.context)
        reply = AIMessage(
            content=result["answer"] or "No model in the pool could answer.",
            response_metadata={
                "routed_model": result["model"],
                "confidence": result["confidence"],
                "cost_usd": result["cost_usd"],
                "escalation_path": result["escalation_path"],
            },
        )
        return {"messages": [reply], "routed_by": result["escalation_path"]}

    builder = StateGraph(
        AgentState, context_schema=Context, input_schema=MessagesState, output_schema=AgentOutput
    )
    builder.add_node("ask_router", ask_router)
    builder.add_edge(START, "ask_router")
    builder.add_edge("ask_router", END)
    return builder.compile(name="agent-with-router")


# The router of the deployment the environment configures (EMAFUSION_DATASET, ...).
agent = build_agent(graph)


async def main(question: str) -> None:
    context = Context(record_outcomes=False)
    async for namespace, mode, payload in agent.astream(
        {"messages": [HumanMessage(question)]},
        context=context,
        stream_mode=["custom", "updates"],
        subgraphs=True,
    ):
        where = "/".join(namespace) or "agent"
        print(f"{where} {mode}: {payload}")


if __name__ == "__main__":
    asyncio.run(main(" ".join(sys.argv[1:]) or "Which gas do plants absorb from the air?"))
