"""Pictures of the router graph, offline: Mermaid text, Graphviz DOT, and PNG via `dot`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from langgraph.graph.state import CompiledStateGraph

from emafusion.graph.router import graph as router_graph

# What each routing edge means; LangGraph knows the edges, not why they are taken.
EDGE_LABELS = {
    ("classify", "predict"): "unsure, or refine",
    ("classify", "invoke_model"): "a plan, or confident: first stage",
    ("classify", "finalize"): "nothing affordable",
    ("predict", "invoke_model"): "first stage (Send per model)",
    ("predict", "finalize"): "nothing affordable",
    ("gather", "judge"): "Send per answer and judge",
    ("gather", "decide"): "nothing answered, or no judges",
    ("decide", "invoke_model"): "escalate: next stage",
    ("decide", "finalize"): "return / exhausted / budget / max levels",
}


def _edges(compiled: CompiledStateGraph) -> tuple[list[str], list[tuple[str, str, bool, str]]]:
    """Nodes and (source, target, conditional, label) edges."""
    drawable = compiled.get_graph()
    nodes = list(drawable.nodes)
    edges = [
        (e.source, e.target, e.conditional, EDGE_LABELS.get((e.source, e.target), ""))
        for e in drawable.edges
    ]
    return nodes, edges


def _label(node: str) -> str:
    return node.strip("_") if node in ("__start__", "__end__") else node


def to_mermaid(compiled: CompiledStateGraph = router_graph) -> str:
    nodes, edges = _edges(compiled)
    # Mermaid reserves lowercase "end" as a keyword.
    special = {"__start__": "START", "__end__": "END"}
    safe = {n: special.get(n) or n.replace("__", "_").strip("_") for n in nodes}
    lines = ["graph TD;"]
    for node in nodes:
        shape = f"([{_label(node)}])" if node in ("__start__", "__end__") else f"[{_label(node)}]"
        lines.append(f"    {safe[node]}{shape};")
    for source, target, conditional, label in edges:
        arrow = "-.->" if conditional else "-->"
        text = f"|{label}|" if label else ""
        lines.append(f"    {safe[source]} {arrow}{text} {safe[target]};")
    return "\n".join(lines) + "\n"


def to_dot(compiled: CompiledStateGraph = router_graph) -> str:
    nodes, edges = _edges(compiled)
    lines = [
        "digraph router {",
        '  graph [rankdir=TB, fontname="Helvetica", label="emafusion router", labelloc=t];',
        '  node [shape=box, style="rounded,filled", fillcolor="#eef2ff", fontname="Helvetica"];',
        '  edge [fontname="Helvetica", fontsize=10];',
    ]
    for node in nodes:
        attrs = f'label="{_label(node)}"'
        if node in ("__start__", "__end__"):
            attrs += ', shape=oval, fillcolor="#d1d5db"'
        lines.append(f'  "{node}" [{attrs}];')
    for source, target, conditional, label in edges:
        edge_attrs = ["style=dashed"] if conditional else []
        if label:
            edge_attrs.append(f'label="{label}"')
        lines.append(f'  "{source}" -> "{target}" [{", ".join(edge_attrs)}];')
    lines.append("}")
    return "\n".join(lines) + "\n"


class RenderError(RuntimeError):
    pass


def to_png(out: Path, compiled: CompiledStateGraph = router_graph) -> Path:
    dot = shutil.which("dot")
    if dot is None:
        raise RenderError(
            "PNG needs Graphviz's `dot` (Debian/Ubuntu: apt-get install graphviz; macOS: brew "
            "install graphviz). Fix: install it, or use --format mermaid|dot."
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [dot, "-Tpng", "-Gdpi=110", "-o", str(out)],
        input=to_dot(compiled).encode(),
        check=True,
        capture_output=True,
    )
    return out
