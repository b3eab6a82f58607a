"""`emafusion serve` as its own process (the real command line, MiniLM, a router built from
train into an empty directory): keys from the environment, a completion and a stream with
the openai client, feedback that reaches the router directory, the key in no log line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from emafusion.stores.recordings import RecordSet, write_jsonl
from emafusion.stores.run_ledger import RunLedger
from tests import synthetic

KEY = "cli-serve-key-0123456789abcdef"
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path, Path, RecordSet]]:
    records = synthetic.make_records()
    recordings = tmp_path / "synthetic.jsonl"
    write_jsonl(records.records, recordings)
    pool = tmp_path / "pool.toml"
    pool.write_text(
        "".join(
            f'[[models]]\nname = "{m}"\nprovider = "replay"\n'
            f"input_per_1m = {p}\noutput_per_1m = {p}\n\n"
            for m, (p, _) in synthetic.MODELS.items()
        )
    )
    router = tmp_path / "router"
    port = _free_port()
    log = tmp_path / "serve.log"
    command = [
        sys.executable, "-m", "emafusion.cli.main", "serve",
        "--recordings", str(recordings), "--pool", str(pool), "--router-dir", str(router),
        "--port", str(port), "--api-keys-env", "EMAFUSION_TEST_SERVE_KEYS",
        "--persist-outcomes", "--log-level", "debug",
    ]  # fmt: skip
    env = {**os.environ, "EMAFUSION_TEST_SERVE_KEYS": KEY}
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                assert process.poll() is None, log.read_text()
                try:
                    if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.3)
            else:
                pytest.fail(f"emafusion serve did not start: {log.read_text()[-2000:]}")
            yield url, router, log, records
        finally:
            process.terminate()
            process.wait(timeout=30)


def test_the_command_serves_the_router(served: tuple[str, Path, Path, RecordSet]) -> None:
    url, router, log, records = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    record = records.split("test")[0]
    reply = client.chat.completions.create(
        model="emafusion", messages=[{"role": "user", "content": record.query}]
    )
    assert reply.model in synthetic.MODELS
    assert reply.choices[0].message.content == record.outcomes[reply.model].response
    chunks = list(
        client.chat.completions.create(
            model="emafusion",
            messages=[{"role": "user", "content": record.query}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    run_id = reply.model_extra["emafusion"]["run_id"]  # type: ignore[index]
    # The run ledger is on disk: feedback could come from another process too.
    assert RunLedger(router).get(run_id) is not None
    sent = httpx.post(
        f"{url}/v1/feedback",
        json={"run_id": run_id, "score": 1.0},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert sent.status_code == 200 and sent.json()["durable"] is True
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong-" + KEY, max_retries=0).models.list()
    text = log.read_text()
    assert "POST /v1/chat/completions 200" in text and "POST /v1/feedback 200" in text
    assert KEY not in text
