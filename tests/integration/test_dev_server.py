"""`langgraph dev` serves the router offline; the SDK runs it (wait and stream); a client
cannot name the server's files, directories or key variables."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from langgraph_sdk import get_client

from emafusion.stores.artifacts import build_router_artifacts
from emafusion.stores.embeddings import Embedder
from emafusion.stores.pool import load_default_pool
from emafusion.stores.recordings import RecordSet
from emafusion.stores.taxonomy import default_taxonomy_path, load_taxonomy

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def router_dir(tmp_path: Path, routerbench_slice: RecordSet, embedder: Embedder) -> Path:
    taxonomy = load_taxonomy(default_taxonomy_path("routerbench"))
    artifacts = build_router_artifacts(
        routerbench_slice, embedder, taxonomy, load_default_pool("routerbench")
    )
    return artifacts.save(tmp_path / "router")


@pytest.fixture
def dev_server(tmp_path: Path, router_dir: Path) -> Iterator[str]:
    port = _free_port()
    langgraph = Path(sys.executable).parent / "langgraph"
    # The deployment names its router and recordings; runs only choose settings.
    env = {
        **os.environ,
        "LANGSMITH_TRACING": "false",
        "LANGGRAPH_CLI_NO_ANALYTICS": "1",
        "PYTHONUNBUFFERED": "1",
        "EMAFUSION_DATASET": "routerbench",
        "EMAFUSION_ROUTER_DIR": str(router_dir),
        "EMAFUSION_TEST_SECRET": "sk-server-secret-0123456789",
    }
    log = (tmp_path / "dev.log").open("w")
    process = subprocess.Popen(
        [
            str(langgraph),
            "dev",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-browser",
            "--no-reload",
            "--config",
            str(ROOT / "langgraph.json"),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"langgraph dev exited: {(tmp_path / 'dev.log').read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/ok", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            pytest.fail("langgraph dev did not start in 120 s")
        yield url
    finally:
        # Stop the server by its pid (and its worker processes, one session).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


async def test_dev_server_runs_the_router(
    dev_server: str, router_dir: Path, routerbench: RecordSet
) -> None:
    client = get_client(url=dev_server)
    assistants = await client.assistants.search(graph_id="router")
    assert assistants, "langgraph.json exposes the graph as 'router'"
    record = routerbench.split("test")[0]
    context = {"record_outcomes": False, "escalation_threshold": 0.7}
    inputs = {"query": record.query, "record_id": record.id}

    result = await client.runs.wait(None, "router", input=inputs, context=context)
    assert isinstance(result, dict)
    assert result["model"] in record.outcomes
    assert result["answer"] == record.outcomes[result["model"]].response
    events = [e["event"] for e in result["trace"]]
    assert events[0] == "classified" and events[-1] == "returned"

    custom: list[str] = []
    updated: set[str] = set()
    async for part in client.runs.stream(
        None, "router", input=inputs, context=context, stream_mode=["custom", "updates"]
    ):
        if part.event == "custom":
            custom.append(part.data["emafusion"])
        elif part.event == "updates":
            updated.update(part.data)
    assert custom[0] == "classified" and custom[-1] == "returned"
    assert {"classify", "invoke_model", "judge", "decide", "finalize"} <= updated


async def test_a_client_cannot_name_server_paths_or_key_variables(
    dev_server: str, router_dir: Path, routerbench: RecordSet, tmp_path: Path
) -> None:
    client = get_client(url=dev_server)
    record = routerbench.split("test")[1]
    inputs = {"query": record.query, "record_id": record.id}
    elsewhere = tmp_path / "attacker-router"
    attacks = [
        {"router_dir": str(elsewhere)},
        {"pool": str(tmp_path / "attacker-pool.toml")},
        {"recordings": "/etc/passwd"},
        {"judge_pool": str(tmp_path / "judges.toml")},
        {"dataset": "mmlu-pro"},
        {"api_key_env": "EMAFUSION_TEST_SECRET"},
    ]
    for context in attacks:
        (key,) = context
        thread = await client.threads.create()
        run = await client.runs.create(thread["thread_id"], "router", input=inputs, context=context)
        await client.runs.join(thread["thread_id"], run["run_id"])
        done = await client.runs.get(thread["thread_id"], run["run_id"])
        assert done["status"] == "error", (key, done["status"])
        state = await client.threads.get(thread["thread_id"])
        error = str(state.get("error") or "") + str(state)
        assert "sk-server-secret" not in error
    # Nothing was written where a client asked.
    assert not elsewhere.exists()
    # The refusal names the field and says where such settings belong.
    thread = await client.threads.create()
    with pytest.raises(Exception) as caught:  # noqa: B017 - the SDK's error type varies
        await client.runs.wait(
            thread["thread_id"],
            "router",
            input=inputs,
            context={"router_dir": str(elsewhere)},
            raise_error=True,
        )
    assert "cannot set router_dir" in str(caught.value)
    assert "EMAFUSION_ROUTER_DIR" in str(caught.value)
