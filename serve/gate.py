"""The door every request passes before the app: API key, body size, and the access log.

A pure ASGI middleware, so that it acts before FastAPI reads a body: an unauthenticated
client is refused without its body being read, and a body is counted as it arrives
(Content-Length is checked first, but a chunked body cannot lie its way past the limit).
The access log names method, path (no query string) and status: never a header.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from emafusion.serve.errors import AUTHENTICATION, APIError
from emafusion.serve.metrics import ServeMetrics
from emafusion.serve.settings import ApiKeys

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

access_log = logging.getLogger("emafusion.serve.access")
# Open to anyone: liveness, and the API's own description (what a client needs to start).
PUBLIC_PATHS = frozenset({"/healthz", "/openapi.json"})
KNOWN_ENDPOINTS = frozenset(
    {"/v1/chat/completions", "/v1/models", "/v1/feedback", "/healthz", "/metrics"}
)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body read once, handed to the app; later receives wait for a disconnect."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            # Another scheme (Basic, ...) is no bearer key at all; "Bearer " alone is a bad one.
            return token.strip() if scheme.lower() == "bearer" else None
    return None


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class Gate:
    def __init__(
        self, app: ASGIApp, keys: ApiKeys, max_body_bytes: int, metrics: ServeMetrics
    ) -> None:
        self.app = app
        self.keys = keys
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path = scope.get("path", "")
        status: list[int] = [0]

        async def send_counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is None:
                body = await self._read_body(receive)
                if body is None:
                    refusal = self._too_large()
            if refusal is not None:
                await self._reply(refusal, send_counted)
                return
            await self.app(scope, _replay(body or b"", receive), send_counted)
        finally:
            endpoint = path if path in KNOWN_ENDPOINTS else "other"
            elapsed = time.perf_counter() - started
            self.metrics.requests.labels(endpoint, str(status[0])).inc()
            self.metrics.latency.labels(endpoint).observe(elapsed)
            access_log.info(
                "%s %s %s %.1fms", scope.get("method"), path, status[0], elapsed * 1000.0
            )

    def _refusal(self, scope: Scope) -> APIError | None:
        if self.keys.enabled and scope.get("path") not in PUBLIC_PATHS:
            token = _bearer(scope)
            if token is None:
                return APIError(
                    401,
                    "missing API key: send it as 'Authorization: Bearer KEY'",
                    AUTHENTICATION,
                    "missing_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            digest = self.keys.check(token) if token else None
            if digest is None:
                return APIError(
                    401,
                    "invalid API key",
                    AUTHENTICATION,
                    "invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            # Who sent it, for per-client state (sticky conversations): a digest's prefix.
            scope.setdefault("state", {})["tenant"] = digest.hex()[:16]
        length = _content_length(scope)
        if length is not None and length > self.max_body_bytes:
            return self._too_large()
        return None

    def _too_large(self) -> APIError:
        return APIError(
            413,
            f"request body over {self.max_body_bytes} bytes. Fix: send a shorter conversation.",
            code="request_too_large",
        )

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole body, or None past the limit (counted as it arrives)."""
        parts: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(parts)  # the client went away; the app sees an empty body
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_body_bytes:
                return None
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)

    async def _reply(self, error: APIError, send: Send) -> None:
        self.metrics.errors.labels(error.code or error.type).inc()
        response = error.response()
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": response.raw_headers,
            }
        )
        await send({"type": "http.response.body", "body": response.body})
