"""The router as a LangGraph graph: `builder`, `graph`, `make_builder`, `make_graph`,
`Context` and the input/output schemas.

The graph's names load lazily, so that nodes importing `emafusion.graph.state` or
`emafusion.graph.context` (leaf modules) do not import the graph itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from emafusion.graph.context import Context, ContextError
from emafusion.graph.state import RouterInput, RouterOutput, RouterState, TraceEvent

if TYPE_CHECKING:
    from emafusion.graph.router import builder, graph, make_builder, make_graph

__all__ = [
    "Context",
    "ContextError",
    "RouterInput",
    "RouterOutput",
    "RouterState",
    "TraceEvent",
    "builder",
    "graph",
    "make_builder",
    "make_graph",
]

_ROUTER_NAMES = {"builder", "graph", "make_builder", "make_graph"}


def __getattr__(name: str) -> Any:
    if name in _ROUTER_NAMES:
        from emafusion.graph import router

        return getattr(router, name)
    raise AttributeError(f"module 'emafusion.graph' has no attribute {name!r}")
