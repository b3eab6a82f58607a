from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from emafusion.stores.download import resolve_data_dir
from emafusion.stores.recordings import RecordSet, load_dataset


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = resolve_data_dir()
    if not (path / "routerbench").is_dir():
        pytest.skip(f"recordings not found in {path}; set EMAFUSION_DATA_DIR")
    return path


@pytest.fixture(scope="session")
def routerbench(data_dir: Path) -> RecordSet:
    return load_dataset("routerbench", data_dir=data_dir)


@pytest.fixture(scope="session")
def mmlu_pro(data_dir: Path) -> RecordSet:
    return load_dataset("mmlu-pro", data_dir=data_dir)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A static HTTP server on 127.0.0.1 serving a fresh directory: (base url, root)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()
