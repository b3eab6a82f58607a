"""The router graph: classify -> [predict] -> invoke_model (a stage's models at once,
Send) -> gather -> judges (Send) -> decide -> next stage | finalize -> record.

`make_builder(resources)` wires the nodes to one set of resources (a `RouterResources`
built by the caller, or a `ResourceSource` such as a deployment's `RouterDirectory`);
`make_graph` compiles it. The module's `builder` and `graph` use the deployment configured
by the environment (`DeploymentSettings.from_env`), loaded on the first run, which is what
`langgraph.json` serves.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from langgraph.types import Send

from emafusion.graph.context import Context
from emafusion.graph.state import RouterInput, RouterOutput, RouterState
from emafusion.nodes import settings
from emafusion.nodes.classify import classify
from emafusion.nodes.decide import decide, route_after_decide
from emafusion.nodes.finalize import finalize
from emafusion.nodes.invoke_model import InvokeInput, dispatch_stage, invoke_model
from emafusion.nodes.judge import JudgeInput, fan_out_judges, gather, judge
from emafusion.nodes.predict import predict
from emafusion.nodes.record import record
from emafusion.nodes.resources import (
    IN_RUN,
    DeploymentSettings,
    ResourceSource,
    RouterDirectory,
    RouterResources,
    StaticResources,
)

NAME = "emafusion-router"
ROUTER_MS = "router_ms"
ResourceNode = Callable[[Any, Runtime[Context], RouterResources], Awaitable[dict[str, Any]]]


def _bind(
    node: ResourceNode, source: ResourceSource, *, count_overhead: bool, entry: bool = False
) -> Any:
    """The node as LangGraph calls it, with the resources handed in.

    Routing nodes add their own time to the router's overhead (`router_ms`), minus what
    they spent waiting on a model (`excluded_ms`): under concurrency, wall time would count
    the time a query waits while others run; node time does not. The entry node first waits
    for the records queued before this run began (`record` writes in the background): a
    run sees every outcome that a run returned before it recorded, as when `record` wrote
    inline (free when nothing is queued).
    """

    async def run(state: Any, runtime: Runtime[Context]) -> dict[str, Any]:
        started = time.perf_counter()
        resources = await source.aget()
        if entry:
            await resources.writer.aflush()
        in_run = IN_RUN.set(True)
        try:
            update = dict(await node(state, runtime, resources) or {})
        finally:
            IN_RUN.reset(in_run)
        excluded = float(update.pop("excluded_ms", 0.0))
        if count_overhead:
            elapsed = (time.perf_counter() - started) * 1000.0
            update[ROUTER_MS] = max(0.0, elapsed - excluded)
        return update

    run.__name__ = run.__qualname__ = node.__name__
    return run


def route_after_classify(state: RouterState, runtime: Runtime[Context]) -> list[Send] | str:
    """A fixed plan -> its first stage; unsure taxonomy -> the learned router; confident ->
    its models (re-ranked by the memory if asked)."""
    context = settings.current(state, runtime)
    mode = state.get("route_mode")
    if mode == "learned" or (mode == "taxonomy" and context.refine_with_memory):
        return "predict"
    return dispatch_stage(state)


def _source(resources: RouterResources | ResourceSource | None) -> ResourceSource:
    if resources is None:
        return RouterDirectory(DeploymentSettings.from_env())
    if isinstance(resources, RouterResources):
        return StaticResources(resources)
    return resources


def make_builder(resources: RouterResources | ResourceSource | None = None) -> StateGraph:
    """The uncompiled router over `resources` (default: the environment's deployment)."""
    source = _source(resources)
    builder = StateGraph(
        RouterState, context_schema=Context, input_schema=RouterInput, output_schema=RouterOutput
    )
    builder.add_node("classify", _bind(classify, source, count_overhead=True, entry=True))
    builder.add_node("predict", _bind(predict, source, count_overhead=True))
    builder.add_node(
        "invoke_model",
        _bind(invoke_model, source, count_overhead=True),
        input_schema=InvokeInput,
    )
    builder.add_node("gather", gather)
    builder.add_node(
        "judge", _bind(judge, source, count_overhead=False), input_schema=JudgeInput
    )
    builder.add_node("decide", _bind(decide, source, count_overhead=True))
    builder.add_node("finalize", _bind(finalize, source, count_overhead=False))
    builder.add_node("record", _bind(record, source, count_overhead=False))

    builder.add_edge(START, "classify")
    builder.add_conditional_edges(
        "classify", route_after_classify, ["predict", "invoke_model", "finalize"]
    )
    builder.add_conditional_edges("predict", dispatch_stage, ["invoke_model", "finalize"])
    # A stage's parallel calls meet in `gather` (it runs once per stage), then the judges.
    builder.add_edge("invoke_model", "gather")
    builder.add_conditional_edges("gather", fan_out_judges, ["judge", "decide"])
    builder.add_edge("judge", "decide")
    builder.add_conditional_edges("decide", route_after_decide, ["invoke_model", "finalize"])
    builder.add_edge("finalize", "record")
    builder.add_edge("record", END)
    return builder


def make_graph(
    resources: RouterResources | ResourceSource | None = None,
    *,
    checkpointer: BaseCheckpointSaver | None = None,
    name: str = NAME,
) -> CompiledStateGraph:
    """The compiled router over `resources` (default: the environment's deployment)."""
    return make_builder(resources).compile(checkpointer=checkpointer, name=name)


builder = make_builder()
graph = builder.compile(name=NAME)
