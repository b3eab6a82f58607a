"""The real router graph on replayed RouterBench recordings with MiniLM embeddings."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from emafusion.graph import Context, make_graph
from emafusion.nodes.resources import RouterResources
from emafusion.stores.recordings import RecordSet


async def test_router_answers_recorded_queries_with_their_recorded_responses(
    make_resources: Callable[..., RouterResources], routerbench: RecordSet
) -> None:
    resources = make_resources()
    graph = make_graph(resources)
    for record in routerbench.split("test")[:6]:
        result = await graph.ainvoke(
            {"query": record.query, "record_id": record.id},
            context=Context(record_outcomes=False),
        )
        model = result["model"]
        assert model in resources.pool.names
        assert result["answer"] == record.outcomes[model].response
        recorded = sum(record.outcomes[m].cost_usd or 0.0 for m in result["escalation_path"])
        assert result["cost_usd"] == pytest.approx(recorded)
        classified = result["trace"][0]["data"]
        assert classified["category"] in ("arc-challenge", "winogrande")
