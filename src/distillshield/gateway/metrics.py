"""Prometheus metrics for one gateway (own registry, so several apps can live in one process)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class GatewayMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "distillshield_requests",
            "API requests by endpoint and status",
            ["endpoint", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "distillshield_request_seconds",
            "Request latency (to last byte)",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter("distillshield_tokens", "Tokens served", ["kind"], registry=r)
        self.rate_limited = Counter(
            "distillshield_rate_limited", "Requests refused by a limit", ["scope", "limit"], registry=r
        )
        self.in_flight = Gauge("distillshield_in_flight", "Requests in flight", registry=r)
        self.audit_pending = Gauge("distillshield_audit_queue", "Audit rows waiting to be written", registry=r)
        self.audit_written = Gauge("distillshield_audit_written", "Audit rows written since start", registry=r)
        self._prompt = self.tokens.labels("prompt")
        self._completion = self.tokens.labels("completion")
        # labels() takes a lock and builds a key on every call; there are few label sets, so keep them.
        self._by_status: dict[tuple[str, int], Any] = {}
        self._by_endpoint: dict[str, Any] = {}

    def bind_audit(self, pending: Callable[[], float], written: Callable[[], float]) -> None:
        self.audit_pending.set_function(pending)
        self.audit_written.set_function(written)

    def observe(self, endpoint: str, status: int, seconds: float, prompt: int, completion: int) -> None:
        requests = self._by_status.get((endpoint, status))
        if requests is None:
            requests = self._by_status[(endpoint, status)] = self.requests.labels(endpoint, str(status))
        latency = self._by_endpoint.get(endpoint)
        if latency is None:
            latency = self._by_endpoint[endpoint] = self.latency.labels(endpoint)
        requests.inc()
        latency.observe(seconds)
        if prompt:
            self._prompt.inc(prompt)
        if completion:
            self._completion.inc(completion)

    def render(self) -> bytes:
        return generate_latest(self.registry)
