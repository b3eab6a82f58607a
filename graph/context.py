"""Runtime settings of one run, passed as LangGraph's `context_schema`.

A leaf module: it imports nothing of ours. Every field is a validated, JSON-serializable
setting; nothing live (models, memories) and nothing that names a file, a directory or an
environment variable. Those come from the deployment (`emafusion.nodes.resources.
DeploymentSettings`: environment variables, `langgraph.json`, the command line), because a
run's context is sent by a client, and a client must never make the server read its files,
send its keys elsewhere, or write outside its configured router directory.
"""

from __future__ import annotations

import math
import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Settings that were once part of the context and now belong to the deployment; a client
# that sends one gets this explanation rather than a bare "extra field".
DEPLOYMENT_SETTINGS = {
    "dataset": "EMAFUSION_DATASET",
    "recordings": "EMAFUSION_RECORDINGS",
    "pool": "EMAFUSION_POOL",
    "router_dir": "EMAFUSION_ROUTER_DIR",
    "taxonomy": "EMAFUSION_TAXONOMY",
    "judge_pool": "EMAFUSION_JUDGE_POOL",
    "data_dir": "EMAFUSION_DATA_DIR",
    "save_memory": "EMAFUSION_PERSIST_OUTCOMES",
    "api_key_env": "the pool file's api_key_env",
    "base_url": "the pool file's base_url",
    "resources": "emafusion.graph.make_graph(resources)",
}


class ContextError(ValueError):
    """A run's settings that cannot be used; the message names the field and the fix."""


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ContextError(f"{name}={value!r}: expected 1/0, true/false, yes/no or on/off")


def _schema_refuses_deployment_settings(schema: dict[str, Any]) -> None:
    """Publish the deployment settings as keys no value satisfies (`"not": {}`).

    The LangGraph server drops context keys its schema does not list before the graph
    sees them; listed as refused, they reach the validator, and a client that names a
    path gets an error saying where the setting belongs instead of a silent default.
    """
    properties = schema.setdefault("properties", {})
    for key, where in DEPLOYMENT_SETTINGS.items():
        properties[key] = {
            "not": {},
            "description": f"Refused: a deployment setting ({where}), never a run's.",
        }


def check_stages(value: dict[str, list[list[str]]]) -> dict[str, list[list[str]]]:
    if "*" not in value:
        raise ValueError("needs a '*' plan, for any other category and unsure queries")
    for category, plan in value.items():
        if not plan or any(not stage for stage in plan):
            raise ValueError(f"plan for {category!r} has an empty stage")
        models = [m for stage in plan for m in stage]
        if len(set(models)) != len(models):
            raise ValueError(f"plan for {category!r} calls a model twice: {models}")
    return value


class FallbackPlan(BaseModel):
    """A fixed plan to switch to when a model of `Context.stages` has degraded."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    stages: dict[str, list[list[str]]]
    escalation_threshold: float = Field(ge=0.0, le=1.0)
    stop_early: bool = True

    @field_validator("stages", mode="after")
    @classmethod
    def _stages(cls, value: dict[str, list[list[str]]]) -> dict[str, list[list[str]]]:
        return check_stages(value)


class Context(BaseModel):
    """How the router decides one query. Build with keywords; unknown names are refused."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        validate_default=True,
        allow_inf_nan=False,
        json_schema_extra=_schema_refuses_deployment_settings,
    )

    preset: str = Field(
        default_factory=lambda: os.environ.get("EMAFUSION_PRESET", "").strip() or "default",
        min_length=1,
        description="Operating point the evaluation chose and saved in the router directory "
        "(default: $EMAFUSION_PRESET, else 'default'). Settings a run sets explicitly "
        "override the preset's.",
    )

    # --- classify ---------------------------------------------------------------------------
    taxonomy_threshold: float = Field(
        default=0.8,
        ge=0.0,
        le=1.01,
        description="Trust the taxonomy when its top category has this probability "
        "(above 1: never).",
    )
    suitability_margin: float = Field(
        default=0.05,
        ge=0.0,
        le=1.0,
        description="A model suits a category when its training accuracy there is within "
        "this margin of the category's best model.",
    )
    llm_classifier: str | None = Field(
        default=None, description="Pool model used as the slow LLM classifier."
    )
    llm_classifier_weight: float = Field(
        default=0.0, ge=0.0, le=1.0, description="lambda in p = lambda p_llm + (1-lambda) p_fast"
    )
    refine_with_memory: bool = Field(
        default=True, description="With a confident taxonomy, still order candidates by memory."
    )

    # --- predict ----------------------------------------------------------------------------
    k: int = Field(default=32, ge=1, le=1024, description="Neighbours the memory consults.")
    cost_weight: float = Field(
        default=0.0,
        ge=0.0,
        description="Success probability traded for one USD per 1k queries when planning "
        "(0: the most accurate credible plan).",
    )
    stages: dict[str, list[list[str]]] | None = Field(
        default=None,
        description="A fixed plan per predicted category: stages of models called at once, "
        "in order ('*': any other category, or an unsure classifier). None: plan from the "
        "memory's predictions, one model per stage.",
    )
    fallback_plans: dict[str, FallbackPlan] | None = Field(
        default=None,
        description="Per model of `stages`, the plan (and threshold) to use instead once live "
        "evidence says that model degraded (the evaluation chooses them with the preset). "
        "A degraded model without one is left out of the plan.",
    )
    min_p_success: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Candidates predicted below this success are skipped.",
    )

    exploration_rate: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="Share of queries on which a model with too little history (fewer "
        "than `exploration_outcomes`) is tried at the top of the plan, and on which a fixed "
        "plan keeps a model it dropped as degraded, to test whether it recovered (0: never "
        "explore, never re-test).",
    )
    exploration_outcomes: int = Field(
        default=10,
        ge=0,
        le=100_000,
        description="Counted outcomes (ground truth, plus judged ones at the memory's "
        "judged weight) after which a model is no longer explored but planned on its "
        "predictions.",
    )
    exploration_budget_usd: float | None = Field(
        default=None,
        ge=0.0,
        description="Most one exploratory call may cost (its pre-call bound, list prices and "
        "estimated tokens); None: only `budget_usd` bounds it.",
    )

    novel_queries: Literal["plan", "strongest"] = Field(
        default="plan",
        description="A query unlike every stored one (its nearest neighbour below the "
        "router's novelty threshold, fitted on held-out categories): 'plan' as any other, "
        "or 'strongest': the model most accurate over all categories answers it alone, "
        "until the memory holds evidence near it.",
    )

    # --- judge and decide -------------------------------------------------------------------
    judges: tuple[str, ...] = Field(
        default=("memory_prior", "answer_format"),
        description="Judges to run on every answer, in parallel (registered names).",
    )
    judge_weights: dict[str, float] = Field(
        default_factory=dict, description="Weight per judge for the static combiner (1.0)."
    )
    combiner: Literal["static", "learned"] = Field(
        default="static",
        description="How judge scores become one confidence: 'static' (weighted mean) or "
        "'learned' (the calibrated combiner fitted by `emafusion judges train`).",
    )
    llm_judge: str | None = Field(
        default=None,
        description="Model the 'llm' judge asks (from the deployment's judge pool, else the "
        "pool).",
    )
    fusion: Literal["last", "vote"] = Field(
        default="last",
        description="Which answer: 'last' (the latest stage's, by its judges' confidence) or "
        "'vote' (every answer gathered votes, weighed by its model's reliability; the "
        "confidence is the fused answer's calibrated P(right)).",
    )
    escalation_threshold: float = Field(
        default=0.6, ge=0.0, le=1.0, description="Return once the confidence reaches this."
    )
    stop_early: bool = Field(
        default=True,
        description="False: call every planned level whatever the confidence (to record "
        "traces for threshold selection); the last answer is chosen as usual.",
    )
    on_abstain: Literal["escalate", "return"] = Field(
        default="escalate",
        description="When no judge gave a score: escalate (fail closed) or return.",
    )
    on_judge_failure: Literal["escalate", "trust_others"] = Field(
        default="escalate",
        description="When a judge errors or returns garbage: never return on that answer "
        "(fail closed), or judge it by the other judges alone.",
    )
    max_levels: int = Field(default=3, ge=1, le=64, description="Most models called per query.")
    models: tuple[str, ...] | None = Field(
        default=None,
        min_length=1,
        description="Only these pool models may answer (planned, re-ranked or fallen back "
        "to); None: the whole pool. Judges and the LLM classifier are not restricted.",
    )
    budget_usd: float | None = Field(
        default=None, ge=0.0, description="Most USD spent on one query (models + judges)."
    )
    model_timeout_s: float = Field(
        default=60.0, gt=0.0, le=3600.0, description="Timeout of one model call, in seconds."
    )

    # --- learning ---------------------------------------------------------------------------
    record_outcomes: bool = Field(
        default_factory=lambda: _env_flag("EMAFUSION_RECORD_OUTCOMES", False),
        description="Write judged outcomes back to the in-memory outcome memory "
        "(default: $EMAFUSION_RECORD_OUTCOMES, else off). Whether they reach disk is the "
        "deployment's choice.",
    )

    @model_validator(mode="before")
    @classmethod
    def _refuse_deployment_settings(cls, data: Any) -> Any:
        if isinstance(data, dict):
            named = sorted(k for k in data if k in DEPLOYMENT_SETTINGS)
            if named:
                where = ", ".join(f"{k} ({DEPLOYMENT_SETTINGS[k]})" for k in named)
                raise ValueError(
                    f"a run's context cannot set {where}: files, directories and data "
                    f"sources are the deployment's settings, never a run's. Fix: drop these "
                    f"keys from the context and configure the server instead."
                )
            unknown = sorted(str(k) for k in data if k not in cls.model_fields)
            if unknown:
                known = ", ".join(sorted(cls.model_fields))
                raise ValueError(
                    f"a run's context has no setting {', '.join(map(repr, unknown))}. "
                    f"Fix: use one of {known} (see graph/context.py)."
                )
        return data

    @field_validator("judges", mode="after")
    @classmethod
    def _judge_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError(f"lists a judge twice: {list(value)}")
        if any(not name.strip() for name in value):
            raise ValueError("judge names must be non-empty")
        return value

    @field_validator("models", mode="after")
    @classmethod
    def _model_names(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        if len(set(value)) != len(value):
            raise ValueError(f"lists a model twice: {list(value)}")
        if any(not name.strip() for name in value):
            raise ValueError("model names must be non-empty")
        return value

    @field_validator("stages", mode="after")
    @classmethod
    def _stages(cls, value: dict[str, list[list[str]]] | None) -> dict[str, list[list[str]]] | None:
        return None if value is None else check_stages(value)

    @field_validator("judge_weights", mode="after")
    @classmethod
    def _weights(cls, value: dict[str, float]) -> dict[str, float]:
        for judge, weight in value.items():
            if not math.isfinite(weight) or weight < 0:
                raise ValueError(f"weight of {judge!r} must be a finite number >= 0")
        return value

    def replace(self, **changes: Any) -> Context:
        """A validated copy with `changes` (model_copy would skip validation)."""
        return Context(**{**self.model_dump(), **changes})
