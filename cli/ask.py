"""`emafusion ask` and `emafusion graph`: route one query; draw the router."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from emafusion.cli.sources import add_store_url_arg, deployment_from_args
from emafusion.graph.context import Context

# What a command needs is imported when it runs: `emafusion --help` stays fast.
if TYPE_CHECKING:
    from langgraph.graph.state import CompiledStateGraph

    from emafusion.nodes.resources import RouterResources


def context_from_args(args: argparse.Namespace) -> Context:
    """Only what the command line sets: the rest comes from the preset (what was evaluated)."""
    given = {
        "preset": args.preset,
        "escalation_threshold": args.threshold,
        "max_levels": args.max_levels,
        "budget_usd": args.budget,
    }
    fields = {name: value for name, value in given.items() if value is not None}
    return Context(**fields, record_outcomes=not args.no_record)


def _describe_event(event: dict[str, Any]) -> str:
    kind = event.get("emafusion", "?")
    if kind == "classified":
        category, mode = event["category"], event["route_mode"]
        return f"classified: {category} ({event['confidence']:.2f}) -> {mode}"
    if kind == "predicted":
        return f"predicted: candidates {', '.join(event['candidates'])}"
    if kind == "invoking":
        return f"invoking: {event['model']} (level {event['level']})"
    if kind == "failed":
        return f"failed: {event['model']}: {event['error']}"
    if kind == "decided":
        conf = event["confidence"]
        shown = "n/a" if conf is None else f"{conf:.3f}"
        return f"judged: {event['model']} confidence {shown} -> {event['decision']}"
    if kind == "escalating":
        return f"escalating: to {event['to']}"
    if kind == "returned":
        return f"returned: {event['model']}"
    return f"{kind}: {json.dumps({k: v for k, v in event.items() if k != 'emafusion'})}"


async def _run(
    graph: CompiledStateGraph,
    query: str,
    record_id: str | None,
    context: Context,
    stream: bool,
) -> dict[str, Any]:
    from emafusion.nodes.invoke_model import MODEL_TAG

    inputs: dict[str, Any] = {"query": query, "record_id": record_id}
    if not stream:
        return await graph.ainvoke(inputs, context=context)
    final: dict[str, Any] = {}
    in_tokens = False
    async for part in graph.astream(
        inputs,
        context=context,
        stream_mode=["custom", "messages", "values"],
    ):
        mode, payload = cast(tuple[str, Any], part)
        if mode == "custom":
            if in_tokens:
                print(file=sys.stderr)
                in_tokens = False
            print(f"[{_describe_event(payload)}]", file=sys.stderr)
        elif mode == "messages":
            chunk, metadata = payload
            if MODEL_TAG in metadata.get("tags", []) and chunk.text:
                print(chunk.text, end="", file=sys.stderr, flush=True)
                in_tokens = True
        elif mode == "values":
            final = payload
    return final


def _recorded_query(resources: RouterResources, record_id: str) -> str:
    records = resources.records
    record = records.get(record_id) if records is not None else None
    if records is None or record is None:
        example = f" such as {records.records[0].id!r}" if records and records.records else ""
        raise ValueError(
            f"record {record_id!r} is not in the recordings"
            f"{f' {records.name}' if records else ''}. Fix: use an id{example} (see "
            f"`emafusion data export`)."
        )
    return record.query


def cmd_ask(args: argparse.Namespace) -> int:
    from emafusion.graph.router import make_graph
    from emafusion.nodes.resources import load_router
    from emafusion.stores.cost import COST_RECORDED

    if not args.question and not args.record_id:
        raise ValueError("ask needs a QUESTION or --record-id ID")
    context = context_from_args(args)
    # The recordings are loaded (and checksummed) once, with the router's resources.
    resources = load_router(deployment_from_args(args, persist_outcomes=args.save_memory))
    query = _recorded_query(resources, args.record_id) if args.record_id else args.question
    graph = make_graph(resources)
    result = asyncio.run(_run(graph, query, args.record_id, context, args.stream))
    attempts_event = next(
        (e for e in reversed(result.get("trace", [])) if e["event"] == "returned"), None
    )
    path = result.get("escalation_path", [])
    print(f"answer:     {(result.get('answer') or '(none)').strip()[:2000]}")
    print(f"model:      {result.get('model') or '(none)'}")
    print(f"path:       {' -> '.join(path) if path else '(no model tried)'}")
    confidence = result.get("confidence")
    print(f"confidence: {'n/a' if confidence is None else f'{confidence:.3f}'}")
    sources = attempts_event["data"].get("cost_sources", []) if attempts_event else []
    estimated = any(source != COST_RECORDED for source in sources)
    note = " (list prices x estimated tokens)" if estimated else ""
    print(f"cost:       ${result.get('cost_usd', 0.0):.6f}{note}")
    print(f"run id:     {result.get('run_id')}  (emafusion feedback --run-id ... --score S)")
    # The run is recorded in the background (after the answer): written before exit.
    resources.flush_records()
    if resources.writer.failed:
        print(f"recording this run failed: {resources.writer.last_error}", file=sys.stderr)
    if attempts_event and not attempts_event["data"].get("answered"):
        failures = [e["data"] for e in result.get("trace", []) if e["event"] == "failed"]
        reason = attempts_event["data"].get("reason") or "no model was tried"
        print(f"no model answered: {reason}", file=sys.stderr)
        for failure in failures:
            print(f"  {failure['model']}: {failure['error']}", file=sys.stderr)
        replayed = [f for f in failures if resources.spec(f["model"]).provider == "replay"]
        if replayed and not args.record_id:
            print(
                "replay models answer only recorded queries: use --record-id, or configure a "
                "pool of live models (--pool).",
                file=sys.stderr,
            )
        return 1
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
    from emafusion.graph.render import to_dot, to_mermaid, to_png

    if args.format == "png":
        if args.out is None:
            raise ValueError("--format png needs --out FILE.png")
        to_png(args.out)
        print(f"wrote {args.out}")
        return 0
    text = to_mermaid() if args.format == "mermaid" else to_dot()
    if args.out is None:
        print(text, end="")
    else:
        args.out.write_text(text)
        print(f"wrote {args.out}")
    return 0


def add_ask_commands(commands: argparse._SubParsersAction) -> None:
    ask = commands.add_parser("ask", help="route one query through the graph")
    ask.add_argument("question", nargs="?", default="", help="the query (or --record-id)")
    source = ask.add_mutually_exclusive_group()
    source.add_argument("--dataset", choices=("mmlu-pro", "routerbench"), default="mmlu-pro")
    source.add_argument("--recordings", type=Path, metavar="FILE.jsonl")
    ask.add_argument("--record-id", help="replay a recorded query end to end")
    ask.add_argument("--pool", type=Path, metavar="FILE")
    ask.add_argument("--router-dir", type=Path, help="built router artifacts")
    add_store_url_arg(ask)
    ask.add_argument("--stream", action="store_true", help="show decisions and tokens live")
    ask.add_argument("--preset", help="an evaluated operating point (default: 'default')")
    ask.add_argument("--threshold", type=float, help="default: the preset's")
    ask.add_argument("--max-levels", type=int, help="default: the preset's")
    ask.add_argument("--budget", type=float, default=None, help="USD per query")
    ask.add_argument("--no-record", action="store_true", help="do not learn from this query")
    ask.add_argument(
        "--save-memory", action="store_true", help="persist what was learned to the router dir"
    )
    ask.set_defaults(handler=cmd_ask)

    draw = commands.add_parser("graph", help="draw the router graph")
    draw.add_argument("--format", choices=("mermaid", "dot", "png"), default="mermaid")
    draw.add_argument("--out", type=Path)
    draw.set_defaults(handler=cmd_graph)
