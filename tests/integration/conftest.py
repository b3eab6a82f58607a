"""Every test in this folder reads the real recordings (or runs a server): marked slow."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/tests/integration/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.slow)


# The PostgreSQL fixtures (tests skip without a test server; CI starts one).
from tests.integration.pg import pg_url, proxy  # noqa: E402, F401
