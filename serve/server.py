"""Run the app on uvicorn: the bind check first (no keys, loopback only), our own access
log (never a header, never a query string) instead of uvicorn's."""

from __future__ import annotations

import logging

import uvicorn

from emafusion.nodes.resources import ResourceSource, RouterResources
from emafusion.serve.app import create_app
from emafusion.serve.settings import ServeSettings, check_bind


def run_server(
    source: ResourceSource | RouterResources,
    settings: ServeSettings,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
) -> None:
    check_bind(host, settings.api_keys)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    app = create_app(source, settings)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        server_header=False,
        # The server's own limits decide; uvicorn's only guard against runaway clients.
        limit_concurrency=max(1024, settings.max_concurrency * 4),
        timeout_keep_alive=30,
    )
