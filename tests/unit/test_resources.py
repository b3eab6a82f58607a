"""Resources of a deployment: built once per router directory, on first use only into an
empty directory, reloaded when the router on disk changes; settings from the environment."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from emafusion.graph import Context, make_graph
from emafusion.nodes import resources as resources_module
from emafusion.nodes.resources import DeploymentSettings, RouterDirectory, load_router
from emafusion.stores.artifacts import ROUTER_MANIFEST, ArtifactsError
from emafusion.stores.embeddings import HashEmbedder
from emafusion.stores.recordings import RecordSet, write_jsonl
from tests import synthetic


@pytest.fixture
def deployment(
    tmp_path: Path, synthetic_records: RecordSet, monkeypatch: pytest.MonkeyPatch
) -> DeploymentSettings:
    # The hash embedder stands in for MiniLM: same interface, no model to load.
    monkeypatch.setattr(resources_module, "default_embedder", lambda: HashEmbedder())
    recordings, pool = synthetic.write_deployment_files(tmp_path, synthetic_records)
    return DeploymentSettings(recordings=recordings, pool=pool, router_dir=tmp_path / "router")


def test_an_empty_router_dir_is_built_from_train_on_first_use(
    deployment: DeploymentSettings, synthetic_records: RecordSet
) -> None:
    assert deployment.router_dir is not None
    resources = load_router(deployment)
    assert (deployment.router_dir / ROUTER_MANIFEST).is_file()
    # Built from train only: no validation or test query is in the memory.
    train = {r.id for r in synthetic_records.split("train")}
    assert set(resources.memory.query_ids) == train
    again = load_router(deployment)  # now loaded, not rebuilt
    assert set(again.memory.query_ids) == train


def test_a_router_dir_holding_anything_else_is_never_rebuilt(
    deployment: DeploymentSettings,
) -> None:
    assert deployment.router_dir is not None
    load_router(deployment)
    (deployment.router_dir / ROUTER_MANIFEST).unlink()
    before = sorted(p.name for p in deployment.router_dir.iterdir())
    with pytest.raises(ArtifactsError, match="ROUTER.json missing"):
        load_router(deployment)
    assert sorted(p.name for p in deployment.router_dir.iterdir()) == before


async def test_the_router_directory_is_reloaded_when_it_changes(
    deployment: DeploymentSettings, synthetic_records: RecordSet
) -> None:
    source = RouterDirectory(deployment, check_every_s=0.0)
    first = await source.aget()
    assert await source.aget() is first  # unchanged: the same resources
    manifest = deployment.router_dir / ROUTER_MANIFEST  # type: ignore[operator]
    stamp = manifest.stat().st_mtime_ns + 1_000_000
    os.utime(manifest, ns=(stamp, stamp))
    second = await source.aget()
    assert second is not first
    # The graph over the source answers with whatever is current.
    record = synthetic_records.split("test")[0]
    result = await make_graph(source).ainvoke(
        {"query": record.query, "record_id": record.id}, context=Context(record_outcomes=False)
    )
    assert result["answer"] == record.outcomes[result["model"]].response


async def test_a_change_is_looked_for_at_most_every_check_interval(
    deployment: DeploymentSettings,
) -> None:
    source = RouterDirectory(deployment, check_every_s=3600.0)
    first = await source.aget()
    manifest = deployment.router_dir / ROUTER_MANIFEST  # type: ignore[operator]
    os.utime(manifest, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert await source.aget() is first


def test_deployment_settings_come_from_the_environment(tmp_path: Path) -> None:
    env = {
        "EMAFUSION_RECORDINGS": str(tmp_path / "r.jsonl"),
        "EMAFUSION_POOL": str(tmp_path / "p.toml"),
        "EMAFUSION_ROUTER_DIR": str(tmp_path / "router"),
        "EMAFUSION_JUDGE_POOL": str(tmp_path / "j.toml"),
        "EMAFUSION_PERSIST_OUTCOMES": "yes",
    }
    settings = DeploymentSettings.from_env(env)
    assert settings.recordings == tmp_path / "r.jsonl" and settings.dataset is None
    assert settings.pool == tmp_path / "p.toml"
    assert settings.router_dir == tmp_path / "router"
    assert settings.judge_pool == tmp_path / "j.toml"
    assert settings.persist_outcomes is True
    default = DeploymentSettings.from_env({})
    assert default.dataset == "mmlu-pro" and default.router_dir is None
    assert default.persist_outcomes is False


def test_a_router_built_for_other_recordings_is_refused(
    deployment: DeploymentSettings, synthetic_records: RecordSet, tmp_path: Path
) -> None:
    load_router(deployment)
    other = tmp_path / "other.jsonl"
    renamed = [r.model_copy(update={"dataset": "other"}) for r in synthetic_records.records]
    write_jsonl(renamed, other)
    from dataclasses import replace

    with pytest.raises(ArtifactsError, match="built from 'synthetic' recordings.*replays 'other'"):
        load_router(replace(deployment, recordings=other))


@pytest.mark.parametrize("damage", [b"{", b"[1, 2]", b"\xff\xfe"])
def test_a_damaged_manifest_is_a_clear_error(deployment: DeploymentSettings, damage: bytes) -> None:
    load_router(deployment)
    assert deployment.router_dir is not None
    manifest = deployment.router_dir / ROUTER_MANIFEST
    manifest.write_bytes(damage)
    with pytest.raises(ArtifactsError, match="Fix: rebuild into an empty directory") as err:
        load_router(deployment)
    assert str(manifest) in str(err.value)
    assert (deployment.router_dir / "memory").is_dir()  # nothing was rebuilt over it
