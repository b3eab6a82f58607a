"""Router overhead: the time each node spends on routing work, summed per query.

Wall time from start to finish would count, under concurrency, the time a query waits
while others run; node time does not. Model and judge calls are excluded by their nodes.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec

P = ParamSpec("P")

ROUTER_MS = "router_ms"


def timed(
    node: Callable[P, Awaitable[dict[str, Any]]],
) -> Callable[P, Awaitable[dict[str, Any]]]:
    @functools.wraps(node)
    async def run(*args: P.args, **kwargs: P.kwargs) -> dict[str, Any]:
        started = time.perf_counter()
        update = await node(*args, **kwargs)
        elapsed = (time.perf_counter() - started) * 1000.0
        update = dict(update or {})
        # A node may exclude time it spent waiting on a model (see invoke_model).
        update[ROUTER_MS] = max(0.0, elapsed - float(update.pop("excluded_ms", 0.0)))
        return update

    return run
