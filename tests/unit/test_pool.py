"""Pool files: the shipped defaults are valid, bad ones say what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from emafusion.stores.pool import (
    PoolError,
    load_default_pool,
    load_pool,
)
from emafusion.stores.providers import build_chat_model
from emafusion.stores.recordings import Outcome, Record, RecordSet


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pool.toml"
    path.write_text(text)
    return path


def test_mmlu_pro_pool_has_the_readme_list_prices() -> None:
    pool = load_default_pool("mmlu-pro")
    pro = pool.get("gemini-1.5-pro-002")
    assert (pro.input_per_1m, pro.output_per_1m) == (1.25, 5.00)
    ordered = pool.by_price()
    blended = [m.input_per_1m + m.output_per_1m for m in ordered]
    assert blended == sorted(blended)
    names = [m.name for m in ordered]
    assert names.index("gemini-1.5-flash-002") < names.index("gemini-1.5-pro-002")


def test_negative_price_names_the_model_and_field(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        '[[models]]\nname = "cheap"\nprovider = "replay"\ninput_per_1m = -1\noutput_per_1m = 1\n',
    )
    with pytest.raises(PoolError) as err:
        load_pool(path)
    message = str(err.value)
    assert "models[0] ('cheap').input_per_1m" in message
    assert "greater than or equal to 0" in message
    assert str(path) in message


def test_unknown_model_lists_the_pool(tmp_path: Path) -> None:
    pool = load_default_pool("routerbench")
    with pytest.raises(PoolError, match="unknown model 'gpt-4'.*Did you mean gpt-4-1106-preview"):
        pool.get("gpt-4")


def test_pool_model_without_recordings(tmp_path: Path) -> None:
    outcome = Outcome(response="A", score=1.0)
    records = RecordSet(
        "tiny",
        [
            Record(
                id="q",
                dataset="tiny",
                category="c",
                query="?",
                outcomes={"gpt-4-1106-preview": outcome},
            )
        ],
        source="synthetic",
    )
    path = _write(
        tmp_path,
        '[[models]]\nname = "gpt-4-1106"\nprovider = "replay"\n'
        "input_per_1m = 10\noutput_per_1m = 30\n",
    )
    with pytest.raises(PoolError, match="'gpt-4-1106'.*no recordings.*gpt-4-1106-preview"):
        load_pool(path).check_recordings(records)


def test_openai_model_needs_base_url(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        '[[models]]\nname = "x"\nprovider = "openai"\ninput_per_1m = 1\noutput_per_1m = 1\n',
    )
    with pytest.raises(PoolError, match="base_url"):
        load_pool(path)


def test_missing_api_key_names_the_variable_not_a_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EMAFUSION_TEST_KEY", raising=False)
    path = _write(
        tmp_path,
        '[[models]]\nname = "x"\nprovider = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
        'api_key_env = "EMAFUSION_TEST_KEY"\ninput_per_1m = 1\noutput_per_1m = 1\n',
    )
    spec = load_pool(path).get("x")
    with pytest.raises(PoolError, match="EMAFUSION_TEST_KEY is not set"):
        build_chat_model(spec)
    monkeypatch.setenv("EMAFUSION_TEST_KEY", "sk-secret-value")
    model = build_chat_model(spec)
    assert "sk-secret-value" not in repr(model)


def test_duplicate_names_and_bad_toml(tmp_path: Path) -> None:
    entry = '[[models]]\nname = "a"\nprovider = "replay"\ninput_per_1m = 1\noutput_per_1m = 1\n'
    with pytest.raises(PoolError, match="unique; repeated: a"):
        load_pool(_write(tmp_path, entry + entry))
    with pytest.raises(PoolError, match="not valid TOML"):
        load_pool(_write(tmp_path, "[[models]\nname ="))
    with pytest.raises(PoolError, match="no such pool file"):
        load_pool(tmp_path / "absent.toml")
