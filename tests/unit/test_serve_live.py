"""The server over a live pool: the synthetic router's models are real ChatOpenAI clients
of an OpenAI-compatible fixture server on 127.0.0.1. Conversations reach the model as a
transcript, sticky threads stay on their model, and the concurrency limit answers 429."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from emafusion.serve.app import create_app
from emafusion.serve.background import BackgroundServer
from emafusion.serve.settings import ServeSettings
from emafusion.stores.pool import load_pool
from tests import synthetic
from tests.fixtures.openai_server import FixtureModel, OpenAIFixtureServer

SLOW_S = 1.0


@pytest.fixture
def upstream() -> Iterator[OpenAIFixtureServer]:
    models = {
        name: FixtureModel(reply=f"{name} says (B).", prompt_tokens=50, completion_tokens=5)
        for name in synthetic.MODELS
    }
    models["slow"] = FixtureModel(reply="slowly (C).", delay_s=SLOW_S)
    with OpenAIFixtureServer(models) as running:
        yield running


def _serve(
    upstream: OpenAIFixtureServer, tmp_path: Path, settings: ServeSettings
) -> BackgroundServer:
    prices = {name: price for name, (price, _) in synthetic.MODELS.items()} | {"slow": 0.01}
    pool = tmp_path / "live.toml"
    pool.write_text(
        "".join(
            f'[[models]]\nname = "{name}"\nprovider = "openai"\nbase_url = "{upstream.url}/v1"\n'
            f"input_per_1m = {price}\noutput_per_1m = {price}\ntimeout_s = 10\n\n"
            for name, price in prices.items()
        )
    )
    records = synthetic.make_records()
    resources = synthetic.make_resources(records, pool=load_pool(pool), replay=False)
    return BackgroundServer(create_app(resources, settings))


@pytest.fixture
def server(upstream: OpenAIFixtureServer, tmp_path: Path) -> Iterator[BackgroundServer]:
    with _serve(upstream, tmp_path, ServeSettings()) as running:
        yield running


def _client(server: BackgroundServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def test_a_conversation_reaches_the_model_as_a_transcript(
    server: BackgroundServer, upstream: OpenAIFixtureServer
) -> None:
    messages = [
        {"role": "system", "content": "Answer with a letter."},
        {"role": "user", "content": "Which cell organelle makes protein? A) ribosome B) none"},
        {"role": "assistant", "content": "A"},
        {"role": "user", "content": [{"type": "text", "text": "And which makes ATP?"}]},
    ]
    reply = _client(server).chat.completions.create(
        model="emafusion", messages=messages, extra_body={"models": ["mid"]}
    )
    assert reply.model == "mid" and reply.choices[0].message.content == "mid says (B)."
    sent = upstream.chat_bodies("mid")[-1]["messages"]
    assert sent == [
        {
            "role": "user",
            "content": "System: Answer with a letter.\n\n"
            "User: Which cell organelle makes protein? A) ribosome B) none\n\n"
            "Assistant: A\n\n"
            "User: And which makes ATP?",
        }
    ]
    # Usage as the live provider reported it.
    assert reply.usage is not None and reply.usage.total_tokens == 55
    assert reply.model_extra["emafusion"]["cost_estimated"] is True  # type: ignore[index]


def test_a_sticky_conversation_stays_on_its_model(server: BackgroundServer) -> None:
    client = _client(server)
    opening = [{"role": "user", "content": "Which empire fell in 476? A) Roman B) Ming"}]
    first = client.chat.completions.create(
        model="emafusion", messages=opening, extra_body={"sticky": True, "models": ["small"]}
    )
    assert first.model == "small"
    conversation = first.model_extra["emafusion"]["sticky"]["conversation"]  # type: ignore[index]
    turn = [
        *opening,
        {"role": "assistant", "content": first.choices[0].message.content or ""},
        {"role": "user", "content": "And in which century was that?"},
    ]
    for _ in range(3):
        kept = client.chat.completions.create(
            model="emafusion", messages=turn, extra_body={"sticky": True}
        )
        info = kept.model_extra["emafusion"]  # type: ignore[index]
        assert kept.model == "small" and info["escalation_path"] == ["small"]
        assert info["sticky"] == {"conversation": conversation, "pinned": "small", "kept": True}
    # Without `sticky` the same turn is routed afresh (no pin reported).
    free = client.chat.completions.create(model="emafusion", messages=turn)
    assert free.model_extra["emafusion"]["sticky"] is None  # type: ignore[index]
    # A conversation_id names the thread whatever its opening.
    named = client.chat.completions.create(
        model="emafusion",
        messages=[{"role": "user", "content": "History: the treaty of 1648?"}],
        extra_body={"sticky": True, "conversation_id": "c-42", "models": ["mid"]},
    )
    again = client.chat.completions.create(
        model="emafusion",
        messages=[{"role": "user", "content": "Biology: what is a protein?"}],
        extra_body={"sticky": True, "conversation_id": "c-42"},
    )
    assert named.model == again.model == "mid"
    # A pinned model outside the request's `models` is not forced on it.
    elsewhere = client.chat.completions.create(
        model="emafusion", messages=turn, extra_body={"sticky": True, "models": ["large"]}
    )
    assert elsewhere.model == "large"


def test_past_the_concurrency_limit_a_request_gets_429(
    upstream: OpenAIFixtureServer, tmp_path: Path
) -> None:
    with _serve(upstream, tmp_path, ServeSettings(max_concurrency=2)) as server:
        client = _client(server)

        def ask(_: int) -> int:
            try:
                client.chat.completions.create(
                    model="slow", messages=[{"role": "user", "content": "take your time"}]
                )
            except openai.RateLimitError as exc:
                assert exc.body["code"] == "concurrency_limit"  # type: ignore[index]
                assert exc.response.headers["retry-after"] == "1"
                return 429
            return 200

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            statuses = sorted(pool.map(ask, range(6)))
        assert statuses.count(200) == 2 and statuses.count(429) == 4
        # The slots free up once those are answered.
        assert ask(0) == 200
