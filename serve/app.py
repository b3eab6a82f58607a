"""The OpenAI-compatible server: `create_app(source, settings)` builds it (tests run it on a
real uvicorn on 127.0.0.1; `emafusion serve` runs the same app).

Endpoints: POST /v1/chat/completions, GET /v1/models, POST /v1/feedback, GET /healthz,
GET /metrics (Prometheus). Every one but /healthz and /openapi.json needs a bearer key
when the server has keys. The router's paths and data come from `source` (the
deployment), never from a request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST

from emafusion.graph.router import make_graph
from emafusion.nodes.feedback import FeedbackError, submit_feedback
from emafusion.nodes.resources import ResourceSource, RouterResources, StaticResources
from emafusion.serve.completions import (
    answer,
    completion,
    completion_chunks,
    event_stream,
    served_models,
    too_busy,
)
from emafusion.serve.conversation import StickyBindings
from emafusion.serve.errors import APIError, ErrorBody, install_error_handlers
from emafusion.serve.gate import Gate
from emafusion.serve.metrics import ServeMetrics
from emafusion.serve.schemas import (
    ChatCompletionRequest,
    FeedbackReply,
    FeedbackRequest,
    Health,
    ModelCard,
    ModelList,
)
from emafusion.serve.settings import ServeSettings

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in {
        400: "Bad input (the message names the field and the fix).",
        401: "Missing or invalid API key.",
        404: "Unknown model or run id.",
        413: "Request body too large.",
        429: "The server's concurrency limit is reached.",
        502: "Every model the router tried failed (the failures are listed).",
    }.items()
}
CREATED = int(time.time())


class ServeState:
    """What the endpoints share: the router, its limits, metrics and sticky bindings."""

    def __init__(self, source: ResourceSource, settings: ServeSettings) -> None:
        self.source = source
        self.settings = settings
        self.graph = make_graph(source)
        self.metrics = ServeMetrics()
        self.sticky = StickyBindings(settings.sticky_conversations, settings.sticky_ttl_s)
        self.in_flight = 0

    async def resources(self) -> RouterResources:
        return await self.source.aget()


def create_app(
    source: ResourceSource | RouterResources, settings: ServeSettings | None = None
) -> FastAPI:
    """The server over a deployment's router (`RouterDirectory`) or built resources."""
    if isinstance(source, RouterResources):
        source = StaticResources(source)
    settings = settings or ServeSettings()
    state = ServeState(source, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.resources()  # load (or fail) at start, not on the first request
        yield

    app = FastAPI(
        title="emafusion",
        summary="An OpenAI-compatible endpoint for the emafusion router.",
        version="1",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.serve = state
    install_error_handlers(
        app, lambda error: state.metrics.errors.labels(error.code or error.type).inc()
    )

    @app.post("/v1/chat/completions", responses=ERRORS, response_model=None)
    async def chat_completions(
        body: ChatCompletionRequest, request: Request
    ) -> JSONResponse | StreamingResponse:
        if state.in_flight >= settings.max_concurrency:
            raise too_busy(settings.max_concurrency)
        state.in_flight += 1
        state.metrics.in_flight.inc()
        try:
            resources = await state.resources()
            tenant = request.scope.get("state", {}).get("tenant", "")
            reply = await answer(
                body,
                resources,
                state.graph,
                settings,
                state.sticky,
                tenant,
                lambda target, reply: state.metrics.observe_reply(
                    target.requested, reply, body.stream
                ),
            )
        finally:
            state.in_flight -= 1
            state.metrics.in_flight.dec()
        if not body.stream:
            return JSONResponse(completion(reply))
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            event_stream(completion_chunks(reply, include_usage)),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.get("/v1/models", responses=ERRORS)
    async def list_models() -> ModelList:
        resources = await state.resources()
        cards = []
        for target in served_models(resources):
            if target.model is None:
                preset = resources.presets.presets.get(target.preset) if resources.presets else None
                info: dict[str, Any] = {
                    "kind": "preset",
                    "preset": target.preset,
                    "settings": dict(preset.settings) if preset else {},
                }
            else:
                spec = resources.spec(target.model)
                info = {
                    "kind": "pool_model",
                    "provider": spec.provider,
                    "input_per_1m_usd": spec.input_per_1m,
                    "output_per_1m_usd": spec.output_per_1m,
                }
            cards.append(
                ModelCard(
                    id=target.requested, created=CREATED, owned_by="emafusion", emafusion=info
                )
            )
        return ModelList(data=cards)

    @app.post("/v1/feedback", responses=ERRORS)
    async def feedback(body: FeedbackRequest) -> FeedbackReply:
        resources = await state.resources()

        def submit() -> FeedbackReply:
            resources.flush_records()  # the run's ledger entry is written in the background
            if resources.runs.get(body.run_id) is None:
                raise APIError(
                    404,
                    f"unknown run_id {body.run_id!r}: not one of this router's recent runs. "
                    f"Fix: send the run_id a reply's 'emafusion' object named.",
                    code="run_not_found",
                    param="run_id",
                )
            try:
                receipt = submit_feedback(resources, body.run_id, body.score, body.model)
            except FeedbackError as exc:
                raise APIError(400, str(exc), code="invalid_feedback") from None
            return FeedbackReply(
                run_id=body.run_id,
                query_id=receipt.query_id,
                model=receipt.model,
                score=receipt.score,
                durable=receipt.durable,
            )

        return await asyncio.to_thread(submit)

    @app.get("/healthz")
    async def healthz() -> Health:
        resources = await state.resources()
        presets = resources.presets.names() if resources.presets else []
        return Health(status="ok", models=len(resources.pool.names), presets=presets)

    @app.get("/metrics", response_class=Response, responses=ERRORS)
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(
        Gate,
        keys=settings.api_keys,
        max_body_bytes=settings.max_body_bytes,
        metrics=state.metrics,
    )
    return app
