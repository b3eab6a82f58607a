"""The one place that turns token usage into US dollars.

Every figure the router reports (per call, per query, per 1k queries) goes through
`cost_usd`, so a price change in a pool file changes every report consistently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Recordings without token counts (MMLU-Pro) need estimates. The rule is the widely used
# "about four characters per token" for English text with BPE tokenizers; it is an
# estimate, and every report built on it says so.
# How a call's USD was obtained, shown beside every figure.
COST_RECORDED = "recorded"
COST_ESTIMATED = "list_price_x_estimated_tokens"
COST_REPORTED_TOKENS = "list_price_x_reported_tokens"

CHARS_PER_TOKEN = 4.0
# Chat templates add role markers and separators around the user text.
CHAT_TEMPLATE_OVERHEAD_TOKENS = 8


@dataclass(frozen=True)
class Prices:
    """USD per one million tokens."""

    input_per_1m: float
    output_per_1m: float

    def __post_init__(self) -> None:
        for name in ("input_per_1m", "output_per_1m"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(
                    f"price {name}={value!r} must be a finite number >= 0 (USD per 1M tokens)"
                )


@dataclass(frozen=True)
class Usage:
    input_tokens: int
    output_tokens: int
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def estimate_tokens(text: str) -> int:
    """Estimated token count of `text` (ceil(chars / 4)); see CHARS_PER_TOKEN."""
    if not text:
        return 0
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))


def estimate_prompt_tokens(prompt: str) -> int:
    return estimate_tokens(prompt) + CHAT_TEMPLATE_OVERHEAD_TOKENS


def estimate_usage(prompt: str, response: str) -> Usage:
    return Usage(estimate_prompt_tokens(prompt), estimate_tokens(response), estimated=True)


def cost_usd(prices: Prices, usage: Usage, recorded_cost_usd: float | None = None) -> float:
    """The USD cost of one call.

    A cost the provider recorded (RouterBench's `total_cost`) is the truth and wins;
    otherwise list prices x tokens.
    """
    if recorded_cost_usd is not None:
        if not math.isfinite(recorded_cost_usd) or recorded_cost_usd < 0:
            raise ValueError(f"recorded cost {recorded_cost_usd!r} must be a finite number >= 0")
        return float(recorded_cost_usd)
    return (
        usage.input_tokens * prices.input_per_1m + usage.output_tokens * prices.output_per_1m
    ) / 1_000_000


def per_1k(mean_cost_usd: float) -> float:
    """Mean USD per query -> USD per 1,000 queries, the unit every table uses."""
    return mean_cost_usd * 1000.0
