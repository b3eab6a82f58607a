"""Selecting where the memory lives, without PostgreSQL: the setting, URLs shown without
passwords, psycopg imported only when used, and followers/leaders on local files."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from emafusion.nodes.resources import DeploymentSettings
from emafusion.stores.memory import OutcomeMemory
from emafusion.stores.memory.postgres import is_store_url
from emafusion.stores.memory.postgres_schema import migrate_command, redact
from emafusion.stores.memory.store import LocalFileStore
from tests.unit.memory_helpers import populated, random_units, rec

ROOT = Path(__file__).resolve().parents[2]


def test_the_store_url_setting_comes_from_the_environment() -> None:
    env = {
        "EMAFUSION_STORE_URL": "postgresql://u@db:5432/router",
        "EMAFUSION_COMPACT_EVERY_S": "60",
    }
    settings = DeploymentSettings.from_env(env)
    assert settings.store_url == "postgresql://u@db:5432/router"
    assert settings.compact_every_s == 60.0
    assert DeploymentSettings.from_env({}).store_url is None  # local files stay the default
    assert is_store_url("postgres://h/db") and not is_store_url("/var/lib/router")


def test_urls_are_shown_without_their_password() -> None:
    assert redact("postgresql://router:hunter2@db.internal:5432/emafusion?sslmode=require") == (
        "postgresql://router:***@db.internal:5432/emafusion?sslmode=require"
    )
    assert "hunter2" not in redact("postgresql://db/emafusion?password=hunter2&user=router")
    assert redact("host=db user=router password=hunter2") == "host=db user=router password=***"
    assert "hunter2" not in migrate_command("postgresql://router:hunter2@db/emafusion")


def test_nothing_imports_psycopg_while_no_store_url_is_set() -> None:
    code = (
        "import sys, emafusion.nodes.resources, emafusion.graph.router, "
        "emafusion.stores.memory.postgres; "
        "assert 'psycopg' not in sys.modules, 'psycopg imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


def test_a_follower_tails_local_files_by_polling(tmp_path: Path) -> None:
    writer = populated("flat", n=20)
    writer.save(tmp_path)
    reader = OutcomeMemory.load(tmp_path)
    follower = reader.follow(interval_s=0.05)
    try:
        assert reader.follow(interval_s=0.05) is follower  # one follower per memory
        vector = random_units(1, 32, 3)[0]
        writer.append("fresh", vector, [rec("m1", 1.0, source="user_feedback")])
        deadline = time.monotonic() + 5
        while "fresh" not in reader and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "fresh" in reader and follower.stats.applied == 1
    finally:
        reader.stop_following()
    assert not follower.running


def test_one_local_store_at_a_time_leads(tmp_path: Path) -> None:
    first, second = LocalFileStore(tmp_path), LocalFileStore(tmp_path)
    assert first.try_lead() and first.try_lead()
    assert not second.try_lead()
