"""Decision events: streamed in custom mode as they happen, and kept in the trace."""

from __future__ import annotations

from langgraph.runtime import Runtime

from emafusion.graph.context import Context
from emafusion.graph.state import EventData, EventName, TraceEvent


def emit(runtime: Runtime[Context], event: EventName, data: EventData) -> TraceEvent:
    item = TraceEvent(event=event, data=data)
    if runtime.stream_writer is not None:
        runtime.stream_writer({"emafusion": event, **data})
    return item
