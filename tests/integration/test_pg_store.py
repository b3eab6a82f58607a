"""The shared outcome store on a real PostgreSQL: same memory as local files, tailing with
NOTIFY, a database unreachable at start or lost mid-run, schema versions, leader compaction,
the deployment setting, the CLI, and LangGraph checkpoints on the same server."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pytest

from emafusion.cli.main import main
from emafusion.graph import Context, make_graph
from emafusion.nodes import resources as resources_module
from emafusion.nodes.feedback import submit_feedback
from emafusion.nodes.resources import DeploymentSettings, RouterResources, load_router
from emafusion.stores.embeddings import HashEmbedder
from emafusion.stores.memory import OutcomeMemory, OutcomeRecord
from emafusion.stores.memory.postgres import DROPPED, QUEUED, PostgresStore, memory_names
from emafusion.stores.memory.postgres_schema import SchemaVersionError, StoreUnavailableError
from emafusion.stores.recordings import RecordSet
from tests import synthetic
from tests.integration.pg import Proxy
from tests.unit.memory_helpers import populated, random_units, rec


def wait_until(condition, timeout_s: float = 10.0) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout_s, "timed out"
        time.sleep(0.005)
    return time.monotonic() - start


def entries(n: int, seed: int, prefix: str) -> tuple[list[str], np.ndarray, list[list]]:
    ids = [f"{prefix}{i}" for i in range(n)]
    now = time.time()
    outcomes = [[rec("m1", float(i % 2), source="user_feedback", timestamp=now)] for i in range(n)]
    return ids, random_units(n, 32, seed), outcomes


def test_a_memory_in_postgres_predicts_exactly_as_the_same_memory_in_files(
    pg_url: str, tmp_path: Path
) -> None:
    for kind in ("flat", "hnsw"):
        local, shared = populated(kind), populated(kind)
        local.save(tmp_path / kind)
        shared.save(PostgresStore(pg_url, kind))
        ids, vectors, outcomes = entries(40, 1, "new")
        for mem in (local, shared):
            mem.append_many(ids[:20], vectors[:20], outcomes[:20])
            for i in range(20, 40):  # batch 1, and entries holding two outcomes
                mem.append(ids[i], vectors[i], [*outcomes[i], rec("m2", 0.5)])
        queries = random_units(25, 32, 7)
        want = OutcomeMemory.load(tmp_path / kind).predict_arrays(queries, k=10, now=2e9)
        got = OutcomeMemory.load(PostgresStore(pg_url, kind))
        assert got.log_report.replayed == 40 and len(got) == len(local)
        assert np.array_equal(got.predict_arrays(queries, k=10, now=2e9).p_success, want.p_success)
        generation = got.compact()
        assert generation.name.startswith("gen-000002-")
        again = OutcomeMemory.load(PostgresStore(pg_url, kind))
        assert again.log_report.replayed == 0  # the log is folded into the snapshot
        again_p = again.predict_arrays(queries, k=10, now=2e9).p_success
        assert np.array_equal(again_p, want.p_success)
    assert memory_names(pg_url) == ["flat", "hnsw"]


def test_a_follower_is_woken_by_notify_long_before_its_poll(pg_url: str) -> None:
    writer = populated("flat", n=50)
    writer.save(PostgresStore(pg_url, "m"))
    reader = OutcomeMemory.load(PostgresStore(pg_url, "m"))
    follower = reader.follow(interval_s=30.0)  # polling alone would take up to 30 s
    try:
        time.sleep(0.3)  # the follower is listening
        ids, vectors, outcomes = entries(3, 2, "n")
        for i in range(3):
            writer.append(ids[i], vectors[i], outcomes[i])
            lag = wait_until(lambda i=i: ids[i] in reader, timeout_s=5.0)
            assert lag < 1.0
        assert follower.stats.applied == 3 and follower.stats.errors == 0
    finally:
        reader.stop_following()


def test_an_unreachable_database_at_start_is_named_without_its_password() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://router:s3cret-pw@127.0.0.1:{port}/emafusion?password=s3cret-pw"
    with pytest.raises(StoreUnavailableError) as error:
        PostgresStore(url, "m", connect_timeout_s=2)
    message = str(error.value)
    assert f"router:***@127.0.0.1:{port}/emafusion" in message and "EMAFUSION_STORE_URL" in message
    assert "s3cret" not in message


def test_a_schema_version_mismatch_is_refused_with_the_migration_command(
    pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import psycopg

    PostgresStore(pg_url, "m").close()  # a blank database is created at the current version
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE emafusion_schema SET version = 0")
    with pytest.raises(SchemaVersionError, match="emafusion memory migrate --store-url"):
        PostgresStore(pg_url, "m")
    assert main(["memory", "migrate", "--store-url", pg_url]) == 0
    assert "schema version 0 -> schema version 1" in capsys.readouterr().out
    PostgresStore(pg_url, "m").close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE emafusion_schema SET version = 99")
    with pytest.raises(SchemaVersionError, match="upgrade emafusion"):
        PostgresStore(pg_url, "m")


def test_a_lost_database_queues_appends_answers_on_and_writes_them_on_reconnect(
    pg_url: str, proxy: Proxy
) -> None:
    populated("flat", n=50).save(PostgresStore(pg_url, "m"))
    cut_off = OutcomeMemory.load(PostgresStore(proxy.url(pg_url), "m", pending_limit=5))
    other = OutcomeMemory.load(PostgresStore(pg_url, "m"))
    store = cut_off.store
    assert isinstance(store, PostgresStore)
    follower = cut_off.follow(interval_s=0.2)
    try:
        ids, vectors, outcomes = entries(7, 3, "out")
        proxy.cut()
        assert cut_off.append(ids[0], vectors[0], outcomes[0]) == QUEUED
        # Answers keep flowing from the in-memory index, which has learned the outcome.
        assert cut_off.predict(vectors[0], ["m1"])["m1"].truth_count >= 1
        assert ids[0] in cut_off
        positions = cut_off.append_many(ids[1:], vectors[1:], outcomes[1:])
        assert positions == [QUEUED] * 4 + [DROPPED] * 2  # the buffer holds 5
        health = store.health()
        assert (health.connected, health.queued, health.dropped) == (False, 5, 2)
        with pytest.raises(StoreUnavailableError, match="PostgreSQL at"):
            cut_off.refresh()
        wait_until(lambda: follower.stats.errors >= 1)  # its turns fail, counted; it goes on
        assert follower.running
        proxy.restore()
        wait_until(lambda: store.health().queued == 0)
        health = store.health()
        assert (health.connected, health.flushed, health.dropped, health.outages) == (
            True,
            5,
            2,
            health.outages,
        ) and health.outages >= 1
        other.refresh()
        assert all(i in other for i in ids[:5]) and not any(i in other for i in ids[5:])
    finally:
        cut_off.stop_following()


def test_one_elected_replica_compacts_in_the_background(pg_url: str) -> None:
    populated("flat", n=30).save(PostgresStore(pg_url, "m"))
    replicas = [OutcomeMemory.load(PostgresStore(pg_url, "m")) for _ in range(3)]
    followers = [r.follow(interval_s=0.1, compact_every_s=0.3) for r in replicas]
    try:
        first = replicas[0].store.current()  # type: ignore[union-attr]
        ids, vectors, outcomes = entries(10, 4, "c")
        replicas[1].append_many(ids, vectors, outcomes)
        store = PostgresStore(pg_url, "m")
        # The store changes inside compact(), the counter just after: wait for both.
        wait_until(
            lambda: (
                store.current() != first
                and store.backlog() == 0
                and sum(f.stats.compactions for f in followers) >= 1
            )
        )
        assert sum(f.stats.leader for f in followers) == 1
        assert all(f.stats.compactions == 0 for f in followers if not f.stats.leader)
        assert len(OutcomeMemory.load(store)) == 40
    finally:
        for replica in replicas:
            replica.stop_following()


def test_compact_commands_for_a_database_and_a_router_directory(
    pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    populated("flat", n=20).save(PostgresStore(pg_url, "only"))
    writer = OutcomeMemory.load(PostgresStore(pg_url, "only"))
    ids, vectors, outcomes = entries(4, 5, "x")
    writer.append_many(ids, vectors, outcomes)
    assert main(["memory", "compact", "--store-url", pg_url]) == 0
    assert "4 log entries folded into gen-000002-" in capsys.readouterr().out
    assert PostgresStore(pg_url, "only").backlog() == 0
    local = populated("flat", n=20)
    local.save(tmp_path / "router" / "memory")
    local.append_many(ids, vectors, outcomes)
    assert main(["memory", "compact", "--router-dir", str(tmp_path / "router")]) == 0
    assert "24 queries, 4 log entries folded" in capsys.readouterr().out


@pytest.fixture
def deployment(
    tmp_path: Path, synthetic_records: RecordSet, monkeypatch: pytest.MonkeyPatch, pg_url: str
) -> DeploymentSettings:
    monkeypatch.setattr(resources_module, "default_embedder", lambda: HashEmbedder())
    recordings, pool = synthetic.write_deployment_files(tmp_path, synthetic_records)
    return DeploymentSettings(
        recordings=recordings, pool=pool, router_dir=tmp_path / "router", store_url=pg_url
    )


def test_a_deployment_with_a_store_url_shares_its_memory_through_postgres(
    deployment: DeploymentSettings, synthetic_records: RecordSet
) -> None:
    assert DeploymentSettings.from_env({"EMAFUSION_STORE_URL": " postgresql://h/db "}).store_url
    assert DeploymentSettings.from_env({}).store_url is None
    first = load_router(deployment)  # builds the router dir, seeds the database from it
    second = load_router(deployment)  # another replica: loads what the first seeded
    try:
        for resources in (first, second):
            assert (resources.memory.location or "").startswith("postgresql://")
            assert resources.persist_outcomes
        train = synthetic_records.split("train")[0]
        receipt = submit_feedback(first, query_id=train.id, model="tiny", score=0.0)
        assert receipt.durable
        wait_until(lambda: _feedback_of(second, train.id) is not None)
        assert _feedback_of(second, train.id) == 0.0
    finally:
        first.memory.stop_following()
        second.memory.stop_following()


def _feedback_of(resources: RouterResources, query_id: str) -> float | None:
    stored = resources.memory.get(query_id)
    outcome = None if stored is None else stored.ground_truth.get("tiny")
    return outcome.score if outcome and outcome.source == "user_feedback" else None


async def test_the_router_runs_with_langgraph_checkpoints_in_postgres(
    pg_url: str, tiny_resources: RouterResources
) -> None:
    saver_module = pytest.importorskip("langgraph.checkpoint.postgres.aio")
    async with saver_module.AsyncPostgresSaver.from_conn_string(pg_url) as saver:
        await saver.setup()
        graph = make_graph(tiny_resources, checkpointer=saver)
        config = {"configurable": {"thread_id": "thread-1"}}
        query = synthetic.query_text("history", 3)
        result = await graph.ainvoke(
            {"query": query}, config=config, context=Context(record_outcomes=False)
        )
        assert result["answer"]
        state = await graph.aget_state(config)
        assert state.values["answer"] == result["answer"] and state.values["query"] == query
        checkpoints = [c async for c in saver.alist(config)]
        assert len(checkpoints) >= 3  # one per super-step, kept in PostgreSQL


def test_outcome_records_round_trip_every_field(pg_url: str) -> None:
    mem = populated("flat", n=5)
    mem.save(PostgresStore(pg_url, "m"))
    outcome = OutcomeRecord(
        model="m9",
        score=0.25,
        source="live_judged",
        cost_usd=1.5e-5,
        latency_s=0.75,
        timestamp=1234.5678,
    )
    mem.append("q-fields", random_units(1, 32, 9)[0], [outcome], "math", category_is_label=True)
    mem.append("q-empty", random_units(1, 32, 10)[0], [])  # a query with no outcome yet
    loaded = OutcomeMemory.load(PostgresStore(pg_url, "m"))
    stored = loaded.get("q-fields")
    assert stored is not None and stored.judged["m9"] == outcome and stored.label == "math"
    assert "q-empty" in loaded
