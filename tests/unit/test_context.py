"""Context: validated, JSON-serializable run settings; paths belong to the deployment."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from emafusion.graph.context import DEPLOYMENT_SETTINGS, Context


def test_defaults_validate_and_round_trip_as_json() -> None:
    context = Context()
    again = Context(**json.loads(context.model_dump_json()))
    assert again == context
    assert context.replace(escalation_threshold=0.9).escalation_threshold == 0.9


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("escalation_threshold", -0.1, "greater than or equal to 0"),
        ("escalation_threshold", float("nan"), "finite"),
        ("escalation_threshold", 1.5, "less than or equal to 1"),
        ("budget_usd", -1.0, "greater than or equal to 0"),
        ("budget_usd", float("nan"), "finite"),
        ("max_levels", 0, "greater than or equal to 1"),
        ("model_timeout_s", 0, "greater than 0"),
        ("k", 0, "greater than or equal to 1"),
        ("judges", ("memory_prior", "memory_prior"), "twice"),
        ("judge_weights", {"a": -1.0}, "finite number >= 0"),
        ("combiner", "magic", "'static' or 'learned'"),
        ("stages", {"math": [["a"]]}, "needs a '*' plan"),
        ("stages", {"*": [["a"], []]}, "empty stage"),
        ("stages", {"*": [["a"], ["a"]]}, "calls a model twice"),
        ("fallback_plans", {"a": {"stages": {"*": [[]]}, "escalation_threshold": 0.5}}, "empty"),
        ("fallback_plans", {"a": {"stages": {"*": [["b"]]}}}, "escalation_threshold"),
        (
            "fallback_plans",
            {"a": {"stages": {"*": [["b"]]}, "escalation_threshold": 2.0}},
            "less than or equal to 1",
        ),
        ("fallback_plans", {"a": {"stages": {"*": [["b"]]}, "threshold": 0.5}}, "threshold"),
    ],
)
def test_bad_settings_name_the_field(field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Context(**{field: value})
    assert field in str(caught.value) and message in str(caught.value)


def test_replace_validates_too() -> None:
    with pytest.raises(ValidationError, match="max_levels"):
        Context().replace(max_levels=-3)


@pytest.mark.parametrize("field", sorted(DEPLOYMENT_SETTINGS))
def test_paths_and_sources_are_refused_with_the_deployment_setting(field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Context(**{field: "/etc"})
    text = str(caught.value)
    assert f"cannot set {field}" in text and DEPLOYMENT_SETTINGS[field] in text


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError, match="escalation_treshold") as err:
        Context(escalation_treshold=0.5)  # type: ignore[call-arg]
    # The fix is in the message: the settings there are, the misspelt one among them.
    assert "Fix: use one of" in str(err.value) and "escalation_threshold" in str(err.value)


def test_json_schema_holds_settings_only() -> None:
    schema = Context.model_json_schema()
    # Deployment settings are published as refused: no value satisfies them.
    for key in DEPLOYMENT_SETTINGS:
        assert schema["properties"][key]["not"] == {}
        assert "Refused" in schema["properties"][key]["description"]
    settings = set(schema["properties"]) - set(DEPLOYMENT_SETTINGS)
    assert {"escalation_threshold", "judges", "budget_usd", "max_levels"} <= settings
    for name, prop in schema["properties"].items():
        assert prop.get("description"), f"{name} has no description"
    # No setting names a file, a directory or an environment variable.
    assert not any(
        word in name for name in settings for word in ("dir", "path", "file", "env", "pool")
    )


def test_record_outcomes_default_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("EMAFUSION_RECORD_OUTCOMES", raising=False)
    assert Context().record_outcomes is False
    monkeypatch.setenv("EMAFUSION_RECORD_OUTCOMES", "1")
    assert Context().record_outcomes is True
    monkeypatch.setenv("EMAFUSION_RECORD_OUTCOMES", "sometimes")
    with pytest.raises(ValueError, match="EMAFUSION_RECORD_OUTCOMES='sometimes'"):
        Context()
