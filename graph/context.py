"""Runtime settings of the router, passed as LangGraph's `context_schema`.

A leaf module: it imports nothing of the project's. Paths are strings so the LangGraph
server can take the context as JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(kw_only=True)
class Context:
    # --- where models and artifacts come from ---------------------------------------------
    dataset: str | None = field(
        default="mmlu-pro",
        metadata={"description": "Recordings replay models answer from: mmlu-pro|routerbench."},
    )
    recordings: str | None = field(
        default=None, metadata={"description": "A JSON Lines recordings file instead of dataset."}
    )
    pool: str | None = field(
        default=None, metadata={"description": "Pool file (TOML); default: the dataset's pool."}
    )
    router_dir: str | None = field(
        default=None,
        metadata={
            "description": "Built router artifacts (outcome memory + category classifier); "
            "default: the user cache, built from the train split on first use."
        },
    )
    taxonomy: str | None = field(
        default=None, metadata={"description": "Taxonomy file; default: the dataset's."}
    )

    # --- classify ---------------------------------------------------------------------------
    taxonomy_threshold: float = field(
        default=0.8,
        metadata={"description": "Trust the taxonomy when its top category has this probability."},
    )
    suitability_margin: float = field(
        default=0.05,
        metadata={
            "description": "A model suits a category when its training accuracy there is within "
            "this margin of the category's best model."
        },
    )
    llm_classifier: str | None = field(
        default=None, metadata={"description": "Pool model used as the slow LLM classifier."}
    )
    llm_classifier_weight: float = field(
        default=0.0,
        metadata={"description": "lambda in p = lambda * p_llm + (1 - lambda) * p_fast"},
    )
    refine_with_memory: bool = field(
        default=True,
        metadata={"description": "With a confident taxonomy, still order candidates by memory."},
    )

    # --- predict ----------------------------------------------------------------------------
    k: int = field(default=32, metadata={"description": "Neighbours the memory consults."})
    cost_weight: float = field(
        default=0.0,
        metadata={
            "description": "USD per 1k queries traded for one point of success probability "
            "when picking the first model (0: cheapest credible model first)."
        },
    )
    min_p_success: float = field(
        default=0.0,
        metadata={"description": "Candidates predicted below this success are skipped."},
    )

    # --- judge and escalate ------------------------------------------------------------------
    judges: tuple[str, ...] = field(
        default=("memory_prior", "answer_format"),
        metadata={"description": "Judges to run on every answer, in parallel."},
    )
    judge_weights: dict[str, float] = field(
        default_factory=dict, metadata={"description": "Weight per judge (default 1.0)."}
    )
    combiner: Literal["static", "learned"] = field(
        default="static",
        metadata={
            "description": "How judge scores become one confidence: 'static' (weighted mean, "
            "judge_weights) or 'learned' (calibrated combiner fitted by `emafusion judges "
            "train`, loaded from router_dir)."
        },
    )
    llm_judge: str | None = field(
        default=None,
        metadata={"description": "Model that the 'llm' judge asks (judge_pool, else the pool)."},
    )
    judge_pool: str | None = field(
        default=None,
        metadata={"description": "Pool file (TOML) of judge models, apart from answering models."},
    )
    escalation_threshold: float = field(
        default=0.6, metadata={"description": "Return once the combined confidence reaches this."}
    )
    max_levels: int = field(default=3, metadata={"description": "Most models called per query."})
    budget_usd: float | None = field(
        default=None, metadata={"description": "Most USD spent on one query (models + judges)."}
    )
    model_timeout_s: float = field(
        default=60.0, metadata={"description": "Timeout of one model call, in seconds."}
    )

    # --- learning ---------------------------------------------------------------------------
    record_outcomes: bool = field(
        default=True,
        metadata={"description": "Write judged outcomes back to the memory (off in evaluation)."},
    )
    save_memory: bool = field(
        default=False,
        metadata={"description": "Persist the memory to router_dir after recording an outcome."},
    )

    # In-process callers (evaluation, tests) may hand over prebuilt resources; the server
    # never does, and then they are loaded from the paths above.
    resources: Any = field(default=None, repr=False, compare=False)
