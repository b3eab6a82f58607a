"""schemathesis against the server's own OpenAPI spec, over HTTP on 127.0.0.1: generated
requests (valid and not) to every operation; none may get a 5xx. The pool is live (a
fixture OpenAI-compatible server answers any query), so a valid request is answered and
a 502 would be a bug, not a missing recording. Bounded: a few dozen examples each."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from emafusion.serve.app import create_app
from emafusion.serve.background import BackgroundServer
from emafusion.serve.settings import ApiKeys, ServeSettings
from emafusion.stores.pool import load_pool
from tests import synthetic
from tests.fixtures.openai_server import FixtureModel, OpenAIFixtureServer

KEY = "schemathesis-key-0123456789"
EXAMPLES = 60


@pytest.fixture
def served(tmp_path: Path) -> Iterator[BackgroundServer]:
    models = {name: FixtureModel(reply=f"{name}: (A).") for name in synthetic.MODELS}
    with OpenAIFixtureServer(models) as upstream:
        pool = tmp_path / "live.toml"
        pool.write_text(
            "".join(
                f'[[models]]\nname = "{name}"\nprovider = "openai"\n'
                f'base_url = "{upstream.url}/v1"\ninput_per_1m = {price}\n'
                f"output_per_1m = {price}\ntimeout_s = 10\n\n"
                for name, (price, _) in synthetic.MODELS.items()
            )
        )
        resources = synthetic.make_resources(pool=load_pool(pool), replay=False)
        settings_ = ServeSettings(api_keys=ApiKeys.of([KEY]), max_body_bytes=65_536)
        with BackgroundServer(create_app(resources, settings_)) as server:
            yield server


OPERATIONS = [
    ("POST", "/v1/chat/completions", (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)),
    ("POST", "/v1/feedback", (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)),
    # No parameters: nothing to negate.
    ("GET", "/v1/models", (GenerationMode.POSITIVE,)),
    ("GET", "/healthz", (GenerationMode.POSITIVE,)),
    ("GET", "/metrics", (GenerationMode.POSITIVE,)),
]
CASES = [(method, path, mode) for method, path, modes in OPERATIONS for mode in modes]


def _routable(case: schemathesis.Case) -> schemathesis.Case:
    """A generated body, made one the router answers: a served model, a user turn last."""
    body = dict(case.body)
    body["model"] = "emafusion"
    body["messages"] = [*body["messages"], {"role": "user", "content": "Which holds? (A) or (B)"}]
    body.pop("models", None)  # random names are refused (400), never routed
    case.body = body
    return case


def _check(served: BackgroundServer, operation: Any, strategy: Any, path: str) -> list[int]:
    seen: list[int] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    @given(case=strategy)
    def check(case: schemathesis.Case) -> None:
        response = case.call(headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
        seen.append(response.status_code)
        assert response.status_code < 500, (
            f"{case.method} {case.path} {case.body!r:.300} -> {response.status_code}: "
            f"{response.text[:500]}"
        )
        if response.status_code >= 400:
            error = response.json()["error"]
            assert {"message", "type", "code"} <= set(error)
        # Without the key every operation but liveness is refused, never a 5xx.
        anonymous = case.call(timeout=30)
        assert anonymous.status_code == (200 if path == "/healthz" else 401), anonymous.text

    check()
    return seen


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_no_request_gets_a_server_error(
    served: BackgroundServer, method: str, path: str, mode: GenerationMode
) -> None:
    api = schemathesis.openapi.from_url(f"{served.url}/openapi.json")
    operation = api[path][method]
    seen = _check(served, operation, operation.as_strategy(generation_mode=mode), path)
    assert seen and max(seen) < 500
    if mode is GenerationMode.POSITIVE and method == "GET":
        assert set(seen) == {200}


def test_generated_conversations_are_routed(served: BackgroundServer) -> None:
    """Valid bodies of every shape the schema allows (unicode, content parts, controls,
    streaming), each ending with a user turn: answered, or refused by a rule the schema
    cannot state (a budget too small), never a server error."""
    api = schemathesis.openapi.from_url(f"{served.url}/openapi.json")
    operation = api["/v1/chat/completions"]["POST"]
    strategy = operation.as_strategy(generation_mode=GenerationMode.POSITIVE).map(_routable)
    seen = _check(served, operation, strategy, "/v1/chat/completions")
    answered = seen.count(200)
    print(f"routed conversations: {len(seen)} sent, {answered} answered, {sorted(set(seen))}")
    assert set(seen) <= {200, 400}
    assert seen.count(200) >= len(seen) // 2, sorted(seen)
