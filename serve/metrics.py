"""The server's Prometheus metrics, in a registry of its own (one per app, so several
apps in one process, as in tests, never share counters)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from emafusion.serve.runner import RoutedReply

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
OVERHEAD_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "emafusion_requests_total",
            "Requests by endpoint and status code.",
            ["endpoint", "status"],
            registry=r,
        )
        self.errors = Counter(
            "emafusion_errors_total", "Error replies by error code.", ["code"], registry=r
        )
        self.completions = Counter(
            "emafusion_completions_total",
            "Answered chat completions by requested model (preset) and answering model.",
            ["requested", "model", "stream"],
            registry=r,
        )
        self.escalations = Counter(
            "emafusion_escalations_total",
            "Models called past the first one, summed over requests.",
            registry=r,
        )
        self.model_calls = Counter(
            "emafusion_model_calls_total",
            "Model calls by model and outcome (answered, failed, unavailable).",
            ["model", "status"],
            registry=r,
        )
        self.cost = Counter(
            "emafusion_cost_usd_total",
            "USD spent (models and judges; partly estimated where not recorded).",
            ["model"],
            registry=r,
        )
        self.tokens = Counter(
            "emafusion_tokens_total", "Tokens of model calls.", ["model", "kind"], registry=r
        )
        self.latency = Histogram(
            "emafusion_request_seconds",
            "Request latency by endpoint.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "emafusion_router_overhead_seconds",
            "Routing time per completion, outside model and judge calls.",
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "emafusion_completions_in_flight", "Chat completions being routed.", registry=r
        )

    def observe_reply(self, requested: str, reply: RoutedReply, stream: bool) -> None:
        for call in reply.calls:
            self.model_calls.labels(call.model, call.status).inc()
            if call.cost_usd:
                self.cost.labels(call.model).inc(call.cost_usd)
            if call.input_tokens:
                self.tokens.labels(call.model, "prompt").inc(call.input_tokens)
            if call.output_tokens:
                self.tokens.labels(call.model, "completion").inc(call.output_tokens)
        if reply.judge_cost_usd:
            self.cost.labels("judges").inc(reply.judge_cost_usd)
        if len(reply.calls) > 1:
            self.escalations.inc(len(reply.calls) - 1)
        self.overhead.observe(reply.overhead_ms / 1000.0)
        if reply.answered:
            self.completions.labels(requested, reply.model or "", str(stream).lower()).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
