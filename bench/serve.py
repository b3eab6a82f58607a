"""Load benchmark of `emafusion serve` on 127.0.0.1, against the replay model served
directly, in the same run.

Two servers, each its own process on 127.0.0.1, on the same stack (FastAPI on uvicorn,
the same request parsing and OpenAI reply framing):
  * router:   `emafusion serve` over the recordings' replay pool (classify, predict,
              replayed model calls, judges, decide, record: the whole graph);
  * baseline: the replay model called directly (`ReplayChatModel.ainvoke`), no routing.
The same clients send each the same requests: recorded queries of the test split (so the
replay models answer), half of them streaming (SSE, with usage). Measured per request on
the client, to the end of the reply (a stream to its `[DONE]`): throughput, p50/p99 at
`--clients` concurrent clients, and without concurrency (one client), errors, the
server's RSS after warm-up and after the run, the router's own reported overhead
(`emafusion.overhead_ms`: graph time outside model and judge calls), and the query
embedding time (MiniLM, batch 1, in this process) of the same queries.

Usage:  .venv/bin/python bench/serve.py [--dataset routerbench] [--router-dir DIR]
            [--requests 5000] [--clients 32] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

# At module level: FastAPI resolves the endpoint's (string) annotations in these globals.
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

ROOT = Path(__file__).resolve().parents[1]
WARMUP = 200


# ------------------------------------------------------------------ the baseline server


def direct_app(dataset: str, data_dir: Path | None, model: str | None) -> FastAPI:
    """The replay model behind the same endpoint shape, without the router."""
    from langchain_core.messages import HumanMessage

    from emafusion.serve.completions import completion, completion_chunks, event_stream
    from emafusion.serve.runner import ModelCall, RoutedReply
    from emafusion.serve.schemas import ChatCompletionRequest
    from emafusion.stores.pool import load_default_pool
    from emafusion.stores.providers import ReplayStore, build_chat_model
    from emafusion.stores.recordings import load_dataset

    records = load_dataset(dataset=dataset, data_dir=data_dir)
    pool = load_default_pool(dataset)
    spec = pool.get(model or pool.names[0])
    chat = build_chat_model(spec, ReplayStore(records))
    app = FastAPI()

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> Any:
        started = time.perf_counter()
        # The same parsing and validation as the router's endpoint.
        body = ChatCompletionRequest.model_validate(await request.json())
        reply = await chat.ainvoke([HumanMessage(body.messages[-1].text)])
        usage = reply.usage_metadata or {"input_tokens": 0, "output_tokens": 0}
        cost = float(reply.response_metadata.get("cost_usd", 0.0))
        routed = RoutedReply(
            run_id=os.urandom(16).hex(),
            preset="direct",
            answer=reply.text,
            model=spec.name,
            confidence=None,
            cost_usd=cost,
            cost_estimated=False,
            judge_cost_usd=0.0,
            prompt_tokens=int(usage["input_tokens"]),
            completion_tokens=int(usage["output_tokens"]),
            usage_estimated=False,
            escalation_path=[spec.name],
            calls=[
                ModelCall(spec.name, "answered", None, cost, 0, 0),
            ],
            failures=[],
            overhead_ms=(time.perf_counter() - started) * 1000.0,
            reason="direct",
        )
        if not body.stream:
            return JSONResponse(completion(routed))
        chunks = completion_chunks(routed, True)
        return StreamingResponse(event_stream(chunks), media_type="text/event-stream")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def run_direct_server(args: argparse.Namespace) -> int:
    import uvicorn

    app = direct_app(args.dataset, args.data_dir, args.model)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
    return 0


# ------------------------------------------------------------------------- the clients


@dataclass
class Run:
    latencies_ms: list[float] = field(default_factory=list)
    overheads_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    @property
    def n_errors(self) -> int:
        return sum(self.errors.values())


def _body(query: str, model: str, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": query}]}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


async def _one(client: httpx.AsyncClient, body: dict[str, Any], run: Run) -> None:
    started = time.perf_counter()
    info: dict[str, Any] | None = None
    try:
        if body.get("stream"):
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                if response.status_code != 200:
                    await response.aread()
                    run.error(f"http {response.status_code}")
                    return
                done = False
                async for line in response.aiter_lines():
                    if line == "data: [DONE]":
                        done = True
                    elif line.startswith("data: "):
                        chunk = json.loads(line[6:])
                        info = chunk.get("emafusion", info)
                if not done:
                    run.error("stream without [DONE]")
                    return
        else:
            response = await client.post("/v1/chat/completions", json=body)
            if response.status_code != 200:
                run.error(f"http {response.status_code}")
                return
            data = response.json()
            info = data.get("emafusion")
            if not data["choices"][0]["message"]["content"] and data["usage"] is None:
                run.error("empty reply")
                return
    except httpx.HTTPError as exc:
        run.error(type(exc).__name__)
        return
    run.latencies_ms.append((time.perf_counter() - started) * 1000.0)
    if info is not None:
        run.overheads_ms.append(float(info.get("overhead_ms", 0.0)))


async def load(
    url: str, queries: list[str], model: str, n: int, clients: int, offset: int = 0
) -> Run:
    """`clients` workers with a connection each, `n` requests, every second one a stream;
    the queries from `offset` on (wrapping around)."""
    run = Run()
    counter = iter(range(n))
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)

    async def worker() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=120.0, limits=limits) as client:
            for i in counter:
                query = queries[(offset + i) % len(queries)]
                await _one(client, _body(query, model, i % 2 == 1), run)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    run.wall_s = time.perf_counter() - started
    return run


# ------------------------------------------------------------------------ the servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def start(cmd: list[str], port: int, log: Path, cache: Path) -> subprocess.Popen[bytes]:
    # An empty embedding cache: a query the server has not seen is embedded (and cached).
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EMAFUSION_CACHE_DIR": str(cache)}
    out = log.open("wb")
    process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{cmd[2:4]} exited: see {log}\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"server did not start within 900 s: see {log}")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


# ---------------------------------------------------------------------------- report


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def embedding_ms(queries: list[str], n: int) -> list[float]:
    """MiniLM on one query at a time, without the cache (what a new query costs)."""
    from emafusion.stores.embeddings import default_embedder
    from emafusion.stores.recordings import routing_text

    embedder = default_embedder(cache=False)
    embedder.embed([routing_text(queries[0])])  # load
    times = []
    for query in queries[:n]:
        started = time.perf_counter()
        embedder.embed([routing_text(query)])
        times.append((time.perf_counter() - started) * 1000.0)
    return times


def in_process_ms(args: argparse.Namespace, router_dir: Path, queries: list[str]) -> list[float]:
    """The same graph run in this process (no HTTP, no server): what routing itself costs.
    The queries and the (fresh) embedding cache are those of the one-client run."""
    import faiss

    from emafusion.graph import Context, make_graph
    from emafusion.nodes.resources import DeploymentSettings, load_router

    faiss.omp_set_num_threads(1)  # as `emafusion serve` does
    resources = load_router(
        DeploymentSettings(dataset=args.dataset, router_dir=router_dir, data_dir=args.data_dir)
    )
    graph = make_graph(resources)

    async def run() -> list[float]:
        times = []
        for i, query in enumerate(queries):
            started = time.perf_counter()
            await graph.ainvoke({"query": query}, context=Context())
            if i >= 20:  # the first calls warm the graph up
                times.append((time.perf_counter() - started) * 1000.0)
        return times

    return asyncio.run(run())


def row(name: str, run: Run) -> str:
    done = len(run.latencies_ms)
    return (
        f"| {name} | {done + run.n_errors} | {run.n_errors} | {done / run.wall_s:.1f} | "
        f"{pct(run.latencies_ms, 50):.1f} | {pct(run.latencies_ms, 99):.1f} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="routerbench", choices=("routerbench", "mmlu-pro"))
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--router-dir", type=Path, help="default: a fresh one (built from train)")
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--single", type=int, default=300, help="requests with one client")
    parser.add_argument("--model", help="the baseline's replay model (default: the pool's first)")
    parser.add_argument("--quick", action="store_true", help="500 requests, 100 single")
    parser.add_argument("--direct-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.direct_server:
        return run_direct_server(args)
    if args.quick:
        args.requests, args.single = 500, 100

    from emafusion.stores.recordings import load_dataset

    records = load_dataset(dataset=args.dataset, data_dir=args.data_dir)
    queries = [r.query for r in records.records]
    random.Random(0).shuffle(queries)
    work = Path(tempfile.mkdtemp(prefix="emafusion-bench-serve-"))
    router_dir = args.router_dir or work / "router"
    data_args = ["--data-dir", str(args.data_dir)] if args.data_dir else []
    py = sys.executable
    model_args = ["--model", args.model] if args.model else []
    router_port, direct_port = free_port(), free_port()
    servers = {
        "router": (
            [py, "-m", "emafusion.cli.main", "serve", "--dataset", args.dataset,
             "--router-dir", str(router_dir), "--port", str(router_port),
             "--max-concurrency", str(max(64, args.clients * 2)), "--log-level", "warning",
             *data_args],
            router_port,
            "emafusion",
        ),
        "baseline": (
            [py, str(Path(__file__).resolve()), "--direct-server", "--port", str(direct_port),
             "--dataset", args.dataset, *data_args, *model_args],
            direct_port,
            "direct",
        ),
    }  # fmt: skip
    print(f"# emafusion serve load benchmark ({args.dataset} recordings, replay pool)")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; load average {os.getloadavg()[0]:.1f} at start; "
        f"{len(queries)} recorded queries (all splits, shuffled), in order, then again"
    )
    seen_before = WARMUP + args.single
    fresh = max(0, min(args.requests, len(queries) - seen_before))
    print(
        f"{args.clients} clients, {args.requests} requests (every second one streamed), warm-up "
        f"{WARMUP}; {fresh} of the {args.requests} are queries the server has not seen (the "
        f"rest hit its embedding cache)"
    )
    runs: dict[str, tuple[Run, Run, Run]] = {}
    rss: dict[str, tuple[float, float, float]] = {}
    for name, (cmd, port, model) in servers.items():
        process = start(cmd, port, work / f"{name}.log", work / f"cache-{name}")
        try:
            url = f"http://127.0.0.1:{port}"
            asyncio.run(load(url, queries, model, WARMUP, args.clients))
            before = rss_mib(process.pid)
            single = asyncio.run(load(url, queries, model, args.single, 1, WARMUP))
            # The same queries again: every embedding is a cache hit, so what is left of
            # the router's added time is routing and serving alone.
            repeat = asyncio.run(load(url, queries, model, args.single, 1, WARMUP))
            start_at = WARMUP + args.single
            loaded = asyncio.run(load(url, queries, model, args.requests, args.clients, start_at))
            after = rss_mib(process.pid)
            # More of the same load: memory must not keep growing past warm-up.
            more = start_at + args.requests
            asyncio.run(load(url, queries, model, args.requests // 5, args.clients, more))
            rss[name] = (before, after, rss_mib(process.pid))
            runs[name] = (single, loaded, repeat)
        finally:
            stop(process)
    embed = embedding_ms(queries, 200)
    os.environ["EMAFUSION_CACHE_DIR"] = str(work / "cache-in-process")
    single_queries = queries[WARMUP - 20 : WARMUP + args.single]
    graph_ms = in_process_ms(args, router_dir, single_queries)

    print(f"\n| server | requests | errors | req/s | p50 ms | p99 ms |  ({args.clients} clients)")
    print("|---|---|---|---|---|---|")
    for name in servers:
        print(row(name, runs[name][1]))
    print("\n| server | requests | errors | req/s | p50 ms | p99 ms |  (1 client)")
    print("|---|---|---|---|---|---|")
    for name in servers:
        print(row(name, runs[name][0]))

    print("\n| added by the router | p50 ms | p99 ms | ratio p50 | ratio p99 |")
    print("|---|---|---|---|---|")
    for label, index in (
        (f"{args.clients} clients", 1),
        ("1 client", 0),
        ("1 client, repeated queries (embedding cache hits)", 2),
    ):
        r, b = runs["router"][index].latencies_ms, runs["baseline"][index].latencies_ms
        print(
            f"| {label} | {pct(r, 50) - pct(b, 50):.1f} | {pct(r, 99) - pct(b, 99):.1f} | "
            f"{pct(r, 50) / pct(b, 50):.2f} | {pct(r, 99) / pct(b, 99):.2f} |"
        )
    r, b = runs["router"][0].latencies_ms, runs["baseline"][0].latencies_ms
    print(
        f"| 1 client: the graph in-process, no HTTP | {pct(graph_ms, 50) - pct(b, 50):.1f} | "
        f"{pct(graph_ms, 99) - pct(b, 99):.1f} | {pct(graph_ms, 50) / pct(b, 50):.2f} | "
        f"{pct(graph_ms, 99) / pct(b, 99):.2f} |"
    )
    print(
        f"\nthe graph in-process (1 client, same queries, fresh embedding cache): p50 "
        f"{pct(graph_ms, 50):.1f} ms, p99 {pct(graph_ms, 99):.1f} ms; served over HTTP: p50 "
        f"{pct(r, 50):.1f} ms, p99 {pct(r, 99):.1f} ms"
    )
    overheads = runs["router"][0].overheads_ms
    print(
        f"\nrouter's own overhead (graph outside model/judge calls, 1 client): "
        f"p50 {pct(overheads, 50):.1f} ms, p99 {pct(overheads, 99):.1f} ms"
    )
    print(
        f"query embedding (MiniLM, batch 1, this process, unloaded): p50 "
        f"{statistics.median(embed):.1f} ms, p99 {pct(embed, 99):.1f} ms"
    )
    print("\n| server | RSS after warm-up MiB | after the run MiB | after 20% more MiB |")
    print("|---|---|---|---|")
    for name, (before, after, later) in rss.items():
        print(f"| {name} | {before:.0f} | {after:.0f} | {later:.0f} |")
    errors = {name: [run.errors for run in phases] for name, phases in runs.items()}
    print(f"\nerrors by kind (1 client, loaded, repeated): {errors}")
    print(f"logs: {work}")
    return 0 if all(not run.n_errors for phases in runs.values() for run in phases) else 1


if __name__ == "__main__":
    raise SystemExit(main())
