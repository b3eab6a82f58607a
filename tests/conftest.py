from __future__ import annotations

import functools
import http.server
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from langchain_core.language_models import BaseChatModel

from emafusion.nodes.resources import RouterResources
from emafusion.stores.artifacts import build_router_artifacts
from emafusion.stores.download import (
    DATA_DIR_ENV,
    DATA_MIRROR_ENV,
    DATASETS,
    SOURCES,
    DataDirError,
    resolve_data_dir,
)
from emafusion.stores.embeddings import Embedder, default_embedder
from emafusion.stores.pool import Pool, load_default_pool
from emafusion.stores.recordings import RecordSet, load_dataset
from emafusion.stores.taxonomy import default_taxonomy_path, load_taxonomy
from tests import synthetic

# No test reaches the network: a download that slips through (a command run without
# --data-dir, with the recordings missing) goes to a closed local port and fails at once.
# Download tests pass their own mirror (a 127.0.0.1 server) explicitly.
os.environ[DATA_MIRROR_ENV] = "http://127.0.0.1:9"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The recordings, all present; else the test skips (tests never download them)."""
    try:
        path = resolve_data_dir()
    except DataDirError as exc:
        pytest.skip(f"recordings unavailable: {exc}")
    missing = [
        source.relative_path
        for dataset in DATASETS
        for source in SOURCES[dataset]
        if not (path / source.relative_path).is_file()
    ]
    if missing:
        pytest.skip(
            f"recordings not found in {path} ({len(missing)} files missing, e.g. {missing[0]}); "
            f"tests never download them. Set {DATA_DIR_ENV} to a copy of ../shared/data or "
            f"run `emafusion data fetch`."
        )
    return path


@pytest.fixture
def synthetic_records() -> RecordSet:
    return synthetic.make_records()


@pytest.fixture
def tiny_resources(synthetic_records: RecordSet) -> RouterResources:
    """A router over synthetic recordings (hash embedder): fresh per test (it learns)."""
    return synthetic.make_resources(synthetic_records)


@pytest.fixture
def data_dir_env(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The recordings as EMAFUSION_DATA_DIR, for commands that resolve the data dir."""
    monkeypatch.setenv(DATA_DIR_ENV, str(data_dir))
    return data_dir


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


# Keep the embedding cache inside the checkout (git-ignored) so tests never write to the
# user's cache and reruns are fast.
os.environ.setdefault(
    "EMAFUSION_CACHE_DIR", str(Path(__file__).resolve().parent.parent / ".cache" / "test")
)


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return default_embedder()


@pytest.fixture(scope="session")
def routerbench_slice(routerbench: RecordSet) -> RecordSet:
    """Every fourth training record: enough to route with, quick to embed."""
    train = routerbench.split("train")[::4]
    return RecordSet("routerbench", train, source="routerbench train slice")


@pytest.fixture
def make_resources(
    routerbench: RecordSet, routerbench_slice: RecordSet, embedder: Embedder
) -> Callable[..., RouterResources]:
    """Fresh resources per call (the memory is mutable): a slice-built router on replay."""

    def make(
        pool: Pool | None = None,
        records: RecordSet | None = routerbench,
        chat_models: dict[str, BaseChatModel] | None = None,
    ) -> RouterResources:
        pool = pool or load_default_pool("routerbench")
        taxonomy = load_taxonomy(default_taxonomy_path("routerbench"))
        artifacts = build_router_artifacts(
            routerbench_slice, embedder, taxonomy, load_default_pool("routerbench")
        )
        return RouterResources.create(
            pool, artifacts, embedder, taxonomy, records, chat_models=chat_models
        )

    return make
