"""Bad requests, keys and limits: each gets OpenAI's error shape with the right status,
and no key ever appears in a reply or a log line."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from emafusion.cli.main import main
from emafusion.serve.app import create_app
from emafusion.serve.background import BackgroundServer
from emafusion.serve.settings import (
    ApiKeys,
    ServeConfigError,
    ServeSettings,
    check_bind,
    load_api_keys,
)
from emafusion.stores.recordings import RecordSet
from tests import synthetic

KEY = "test-key-0123456789abcdef"
OTHER_KEY = "test-key-fedcba9876543210"


@pytest.fixture
def server(synthetic_records: RecordSet) -> Iterator[BackgroundServer]:
    settings = ServeSettings(
        api_keys=ApiKeys.of([KEY, OTHER_KEY]), max_body_bytes=4096, max_messages=4
    )
    with BackgroundServer(create_app(synthetic.make_resources(synthetic_records), settings)) as s:
        yield s


def _post(server: BackgroundServer, body: Any, key: str | None = KEY, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=headers, **kw)


def _error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "code"}
    assert error["code"] == code, error
    return dict(error)


def _ok_body(query: str = "q") -> dict[str, Any]:
    return {"model": "emafusion", "messages": [{"role": "user", "content": query}]}


@pytest.mark.parametrize(
    ("body", "code", "names"),
    [
        ({"messages": [{"role": "user", "content": "q"}]}, "invalid_request", "model"),
        ({"model": "emafusion"}, "invalid_request", "messages"),
        ({"model": "emafusion", "messages": []}, "invalid_request", "messages"),
        ({**_ok_body(), "temprature": 0.2}, "invalid_request", "temprature"),
        ({**_ok_body(), "router_dir": "/etc"}, "invalid_request", "deployment settings"),
        ({**_ok_body(), "pool": "/tmp/evil.toml"}, "invalid_request", "never a request's"),
        ({**_ok_body(), "min_confidence": 1.5}, "invalid_request", "min_confidence"),
        ({**_ok_body(), "max_cost_usd": -1}, "invalid_request", "max_cost_usd"),
        ({**_ok_body(), "models": ["tiny", "tiny"]}, "invalid_request", "twice"),
        ({**_ok_body(), "models": ["gpt-9"]}, "invalid_settings", "not in the pool"),
        ({**_ok_body(), "n": 2}, "invalid_request", "n"),
        ({**_ok_body(), "tools": [{"type": "function"}]}, "invalid_request", "tools"),
        ({**_ok_body(), "logprobs": True}, "invalid_request", "logprobs"),
        ({**_ok_body(), "stream": "yes"}, "invalid_request", "stream"),
        (
            {"model": "emafusion", "messages": [{"role": "tool", "content": "x"}]},
            "invalid_request",
            "role",
        ),
        (
            {
                "model": "emafusion",
                "messages": [{"role": "user", "content": [{"type": "image_url"}]}],
            },
            "invalid_request",
            "messages.0.user.content",
        ),
        (
            {"model": "emafusion", "messages": [{"role": "assistant", "content": "hi"}]},
            "invalid_messages",
            "last message is an assistant",
        ),
        (
            {"model": "emafusion", "messages": [{"role": "user", "content": "q"}] * 5},
            "too_many_messages",
            "limit of 4",
        ),
        ([1, 2, 3], "invalid_request", "body"),
    ],
)
def test_bad_requests_are_400_naming_the_field(
    server: BackgroundServer, body: Any, code: str, names: str
) -> None:
    error = _error(_post(server, body), 400, code)
    assert error["type"] == "invalid_request_error"
    assert names in error["message"]


def test_unreadable_json_and_unknown_routes(server: BackgroundServer) -> None:
    raw = httpx.post(
        f"{server.url}/v1/chat/completions",
        content=b'{"model": ',
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    assert "not valid JSON" in _error(raw, 400, "invalid_request")["message"]
    nan = httpx.post(
        f"{server.url}/v1/chat/completions",
        content=b'{"model": "emafusion", "messages": [{"role": "user", "content": "q"}], '
        b'"min_confidence": NaN}',
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    _error(nan, 400, "invalid_request")
    missing = httpx.get(f"{server.url}/v1/nothing", headers={"Authorization": f"Bearer {KEY}"})
    _error(missing, 404, "not_found")
    wrong_method = httpx.get(
        f"{server.url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}
    )
    _error(wrong_method, 405, "method_not_allowed")
    unknown_model = _post(server, {**_ok_body(), "model": "gpt-4o"})
    _error(unknown_model, 404, "model_not_found")


def test_missing_and_wrong_keys_are_401_and_never_echoed(
    server: BackgroundServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    missing = _post(server, _ok_body(), key=None)
    assert _error(missing, 401, "missing_api_key")["type"] == "authentication_error"
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong_key = KEY[:-1] + "X"
    wrong = _post(server, _ok_body(), key=wrong_key)
    _error(wrong, 401, "invalid_api_key")
    assert wrong_key not in wrong.text
    basic = httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Basic {KEY}"})
    _error(basic, 401, "missing_api_key")
    for path in ("/v1/models", "/metrics"):
        _error(httpx.get(f"{server.url}{path}"), 401, "missing_api_key")
    # Liveness and the API's description stay open; the other key works too.
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    assert httpx.get(f"{server.url}/openapi.json").status_code == 200
    ok = httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {OTHER_KEY}"})
    assert ok.status_code == 200
    # A key pasted into the body (or the query string) is never echoed either.
    pasted = _post(server, {**_ok_body(), "api_key": KEY}, params={"key": KEY})
    _error(pasted, 400, "invalid_request")
    assert KEY not in pasted.text
    # A real client maps the statuses to its own errors.
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=wrong_key, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    # What the server logged (the clients' own debug logs are theirs).
    logged = "\n".join(
        r.getMessage() for r in caplog.records if r.name.startswith(("emafusion", "uvicorn"))
    )
    assert "POST /v1/chat/completions 401" in logged and "GET /v1/models 200" in logged
    for secret in (KEY, OTHER_KEY, wrong_key):
        assert secret not in logged


def test_an_oversized_body_is_413_whether_declared_or_chunked(server: BackgroundServer) -> None:
    big = _ok_body("x" * 5000)
    _error(_post(server, big), 413, "request_too_large")

    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b" " * 1000

    chunked = httpx.post(
        f"{server.url}/v1/chat/completions",
        content=chunks(),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    _error(chunked, 413, "request_too_large")
    unauthenticated = _post(server, big, key=None)
    _error(unauthenticated, 401, "missing_api_key")  # refused before its body is read


def test_keys_load_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"# ops team\n{KEY}\n\n{OTHER_KEY}  # ci\n")
    loaded = load_api_keys(file=keys)
    assert loaded.check(KEY) and loaded.check(OTHER_KEY) and not loaded.check("nope" * 5)
    monkeypatch.setenv("EMAFUSION_TEST_KEYS", f"{KEY},{OTHER_KEY}")
    assert load_api_keys(env="EMAFUSION_TEST_KEYS").check(OTHER_KEY)
    keys.write_text("short\n")
    with pytest.raises(ServeConfigError, match="shorter than 16") as short:
        load_api_keys(file=keys)
    assert "short\n" not in str(short.value)
    monkeypatch.delenv("EMAFUSION_TEST_KEYS")
    with pytest.raises(ServeConfigError, match="unset or empty"):
        load_api_keys(env="EMAFUSION_TEST_KEYS")
    with pytest.raises(ServeConfigError, match="unreadable"):
        load_api_keys(file=tmp_path / "absent")


def test_listening_beyond_loopback_needs_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.5"):
        check_bind(host, ApiKeys())
    for host in ("0.0.0.0", "::", "10.1.2.3", "example.org"):
        with pytest.raises(ServeConfigError, match="without API keys"):
            check_bind(host, ApiKeys())
        check_bind(host, ApiKeys.of([KEY]))
    # The command refuses at once, before loading any router.
    code = main(["serve", "--router-dir", str(tmp_path / "r"), "--host", "0.0.0.0"])
    assert code == 2
    assert "refusing to listen on '0.0.0.0' without API keys" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
