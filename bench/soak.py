"""Soak the router against provider faults: a live three-model OpenAI-compatible pool on
127.0.0.1 (the test fixture server), one fault kind at a time on the strongest model (and
all kinds mixed on every model), a bounded batch of queries through the real graph, half
of them streamed.

    .venv/bin/python bench/soak.py [--queries 1000] [--concurrency 8]

Prints a table per fault kind: answers returned, answers lost while a healthy model
existed, truncated or empty answers accepted, retries (requests beyond the first per
call), wall time. The router's memory and classifier are the synthetic test world's
(tests/synthetic.py), so no recordings or embedding model are needed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from emafusion.graph import Context, make_graph  # noqa: E402
from emafusion.stores.pool import ModelSpec, Pool  # noqa: E402
from tests import synthetic  # noqa: E402
from tests.fixtures.openai_server import Fault, FixtureModel, OpenAIFixtureServer  # noqa: E402

ANSWER = "Working it through, the answer is (B)."
# Fixture models named as the synthetic memory's models, so the router has a record of them.
MODELS = {"tiny": 0.1, "mid": 2.0, "large": 10.0}
KINDS = (
    "http500",
    "rate_limit",
    "timeout",
    "reset",
    "reset_mid_stream",
    "invalid_json",
    "truncated_stream",
    "empty_choices",
    "no_usage",
    "slow_tokens",
)


@dataclass
class Tally:
    answered: int = 0
    lost_with_healthy: int = 0
    bad_accepted: int = 0
    calls: int = 0
    seconds: float = 0.0


def _faults(kind: str) -> dict[str, tuple[Fault, ...]]:
    options: dict[str, Any] = {}
    if kind == "rate_limit":
        options["retry_after"] = "0.05"
    if kind == "slow_tokens":
        options["delay_s"] = 0.02
    if kind == "mixed":
        return {
            m: tuple(Fault.sometimes(k, 0.03, retry_after="0.05") for k in KINDS if k != "timeout")
            + (Fault.sometimes("timeout", 0.01),)
            for m in MODELS
        }
    return {"large": (Fault.always(kind, **options),)}


async def _one(graph: Any, query: str, stream: bool) -> dict[str, Any]:
    context = Context(record_outcomes=False, model_timeout_s=1.0)
    if not stream:
        return await graph.ainvoke({"query": query}, context=context)
    final: dict[str, Any] = {}
    async for mode, payload in graph.astream(
        {"query": query}, context=context, stream_mode=["messages", "values"]
    ):
        if mode == "values":
            final = payload
    return final


async def soak(kind: str, queries: int, concurrency: int) -> Tally:
    faults = _faults(kind)
    server_models = {m: FixtureModel(reply=ANSWER, faults=faults.get(m, ())) for m in MODELS}
    records = synthetic.make_records()
    with OpenAIFixtureServer(server_models, seed=7) as server:
        pool = Pool(
            models=[
                ModelSpec(
                    name=m,
                    provider="openai",
                    base_url=f"{server.url}/v1",
                    input_per_1m=p,
                    output_per_1m=p,
                    timeout_s=1.0,
                )
                for m, p in MODELS.items()
            ]
        )
        resources = synthetic.make_resources(records, pool=pool, replay=False)
        graph = make_graph(resources)
        # Topics in turn: arithmetic queries go to the cheap model first, the others to the
        # strong one (the taxonomy is sure of them), which is where single faults bite.
        by_topic = [[r.query for r in records.records if r.category == t] for t in synthetic.TOPICS]
        texts = [q for group in zip(*by_topic, strict=False) for q in group]
        semaphore = asyncio.Semaphore(concurrency)
        tally = Tally()

        async def run(i: int) -> None:
            async with semaphore:
                result = await _one(graph, texts[i % len(texts)], stream=i % 2 == 1)
            paths = result.get("escalation_path", [])
            tally.calls += len(paths)
            if result.get("answer") is None:
                # A fault kind downs one model only, so two healthy ones always exist; mixed
                # faults are transient on every model (a retry or the next model succeeds).
                tally.lost_with_healthy += 1
                return
            tally.answered += 1
            if result["answer"].strip() != ANSWER:
                tally.bad_accepted += 1

        started = time.perf_counter()
        await asyncio.gather(*(run(i) for i in range(queries)))
        tally.seconds = time.perf_counter() - started
        requests = sum(server.count(m) for m in MODELS)
        tally.calls = requests - tally.calls  # requests beyond the first of each call
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--kinds", default=",".join((*KINDS, "mixed")))
    args = parser.parse_args()
    print(
        f"{args.queries} queries per fault kind, concurrency {args.concurrency}, half streamed; "
        f"pool {', '.join(MODELS)} on 127.0.0.1 (faults on 'large' unless mixed)\n"
    )
    print(
        "| fault | answered | lost while a healthy model existed | truncated/empty accepted | "
        "retries | wall s |"
    )
    print("|---|---:|---:|---:|---:|---:|")

    async def every_kind() -> None:
        # One event loop for the whole soak, as in a server: langchain-openai keeps its
        # HTTP client across models, and a client outlives no event loop.
        for kind in args.kinds.split(","):
            t = await soak(kind, args.queries, args.concurrency)
            print(
                f"| {kind} | {t.answered} | {t.lost_with_healthy} | {t.bad_accepted} | "
                f"{t.calls} | {t.seconds:.1f} |",
                flush=True,
            )

    asyncio.run(every_kind())


if __name__ == "__main__":
    main()
