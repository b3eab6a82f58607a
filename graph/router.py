"""The router graph: classify -> [predict] -> invoke_model -> judges (Send) -> decide.

`builder` is the uncompiled graph (compile it with your own checkpointer); `graph` is it
compiled without one, as `langgraph.json` serves it.
"""

from __future__ import annotations

from typing import Literal

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from emafusion.graph.context import Context
from emafusion.graph.state import RouterInput, RouterOutput, RouterState
from emafusion.nodes.classify import classify
from emafusion.nodes.escalate import decide, route_after_decide
from emafusion.nodes.finalize import finalize
from emafusion.nodes.invoke import MODEL_RETRY, invoke_model, model_failed
from emafusion.nodes.judge import fan_out_judges, judge
from emafusion.nodes.predict import predict
from emafusion.nodes.record import record
from emafusion.nodes.timing import timed


def route_after_classify(
    state: RouterState, runtime: Runtime[Context]
) -> Literal["predict", "invoke_model", "finalize"]:
    """Unsure taxonomy -> learned router; confident -> its models (re-ranked if asked)."""
    context = runtime.context or Context()
    if state.get("route_mode") != "taxonomy" or context.refine_with_memory:
        return "predict"
    return "invoke_model" if state.get("candidates") else "finalize"


def route_after_predict(state: RouterState) -> Literal["invoke_model", "finalize"]:
    return "invoke_model" if state.get("candidates") else "finalize"


builder = StateGraph(
    RouterState, context_schema=Context, input_schema=RouterInput, output_schema=RouterOutput
)
# Routing nodes are timed so the overhead excludes model calls and waiting on other runs.
builder.add_node("classify", timed(classify))
builder.add_node("predict", timed(predict))
builder.add_node(
    "invoke_model",
    timed(invoke_model),
    retry_policy=MODEL_RETRY,
    error_handler=model_failed,
)
builder.add_node("judge", judge)
builder.add_node("decide", timed(decide))
builder.add_node("finalize", finalize)
builder.add_node("record", record)

builder.add_edge(START, "classify")
builder.add_conditional_edges("classify", route_after_classify)
builder.add_conditional_edges("predict", route_after_predict)
builder.add_conditional_edges("invoke_model", fan_out_judges, ["judge", "decide"])
builder.add_edge("judge", "decide")
builder.add_conditional_edges("decide", route_after_decide)
builder.add_edge("finalize", "record")
builder.add_edge("record", END)

graph = builder.compile(name="emafusion-router")
