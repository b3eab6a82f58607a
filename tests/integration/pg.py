"""The PostgreSQL the shared-store tests run against, and a cuttable TCP proxy to it.

The server is the throwaway cluster `.ci/pg.sh start` runs (CI starts it in .ci/run; a
developer with `make pg-up`): its URL comes from ``EMAFUSION_TEST_PG_URL`` or the state file
``.pg/url`` that pg.sh writes. Without either the tests skip, saying so.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
SKIP_REASON = (
    'no test PostgreSQL: run `make pg-up` (or `eval "$(bash .ci/pg.sh start)"`) to start a '
    "throwaway cluster; CI starts one"
)


def server_url() -> str | None:
    url = os.environ.get("EMAFUSION_TEST_PG_URL", "").strip()
    if not url:
        state = ROOT / ".pg" / "url"
        url = state.read_text().strip() if state.is_file() else ""
    return url or None


def with_database(url: str, database: str) -> str:
    split = urlsplit(url)
    return urlunsplit((split.scheme, split.netloc, "/" + database, split.query, ""))


def with_port(url: str, host: str, port: int) -> str:
    split = urlsplit(url)
    user = split.netloc.rsplit("@", 1)[0] + "@" if "@" in split.netloc else ""
    return urlunsplit((split.scheme, f"{user}{host}:{port}", split.path, split.query, ""))


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty database on the test server (dropped afterwards)."""
    url = server_url()
    if url is None:
        pytest.skip(SKIP_REASON)
    import psycopg

    name = f"t_{secrets.token_hex(6)}"
    try:
        admin = psycopg.connect(url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"the test PostgreSQL at {url} is not reachable: {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(url, name)
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Proxy:
    """A TCP proxy on 127.0.0.1 to the database that can be cut (connections reset, new
    ones refused) and restored: a database lost mid-run, for real, without stopping it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._up = threading.Event()
        self._up.set()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, url: str) -> str:
        return with_port(url, "127.0.0.1", self.port)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._up.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self._up.clear()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        self._up.set()

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()


@pytest.fixture
def proxy(pg_url: str) -> Iterator[Proxy]:
    split = urlsplit(pg_url)
    server = Proxy((split.hostname or "127.0.0.1", split.port or 5432))
    try:
        yield server
    finally:
        server.close()
