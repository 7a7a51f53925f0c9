"""Prometheus metrics of one node, in a registry of its own (several apps may share a process)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

__all__ = ["FastCounter", "Metrics"]


class FastCounter(Collector):
    """A counter without labels for the per-frame paths: a plain integer (the event loop's
    one thread is its only writer), exported like a `prometheus_client.Counter` (with the
    `_total` suffix). Its `inc` costs a fraction of `Counter.inc`, which takes a lock."""

    __slots__ = ("_documentation", "_name", "value")

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self._name = name
        self._documentation = documentation
        self.value = 0
        registry.register(self)

    def inc(self, amount: int = 1) -> None:
        """Add `amount` (not negative)."""
        self.value += amount

    def collect(self) -> Iterator[CounterMetricFamily]:
        """The metric family, for the registry."""
        yield CounterMetricFamily(self._name, self._documentation, value=self.value)

    def describe(self) -> list[CounterMetricFamily]:
        """The metric family without its value (for the registry's name check)."""
        return [CounterMetricFamily(self._name, self._documentation)]


class Metrics:
    """The counters and gauges a node exports at `/metrics`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.connections = Gauge(
            "roomcast_connections", "Open WebSocket connections", registry=self.registry
        )
        self.rooms = Gauge("roomcast_rooms", "Rooms with local members", registry=self.registry)
        self.frames_in = FastCounter(
            "roomcast_frames_in", "Frames received from clients", self.registry
        )
        self.frames_out = FastCounter(
            "roomcast_frames_out", "Frames queued to clients", self.registry
        )
        self.errors = Counter(
            "roomcast_errors",
            "Error frames and refusals by code",
            ["code"],
            registry=self.registry,
        )
        self.disconnects = Counter(
            "roomcast_disconnects",
            "Connections closed by the server, by close code",
            ["code"],
            registry=self.registry,
        )
        self.slow_consumers = Counter(
            "roomcast_slow_consumer_disconnects",
            "Connections closed because their outbound buffer overflowed",
            registry=self.registry,
        )
        self.publications = FastCounter(
            "roomcast_publications", "Messages published to rooms", self.registry
        )
        self.duplicates = Counter(
            "roomcast_duplicate_publications",
            "Publishes not carried out because their idempotency key had published already",
            registry=self.registry,
        )
        self.broker_errors = Counter(
            "roomcast_broker_errors", "Broker operations that failed", registry=self.registry
        )
        self.webhook_requests = Counter(
            "roomcast_webhook_requests",
            "Webhook requests sent, by result (ok, status_4xx, status_5xx, timeout, error)",
            ["result"],
            registry=self.registry,
        )
        self.webhook_delivered = Counter(
            "roomcast_webhook_events_delivered",
            "Webhook events delivered (a 2xx answer)",
            registry=self.registry,
        )
        self.webhook_retries = Counter(
            "roomcast_webhook_retries", "Webhook requests sent again", registry=self.registry
        )
        self.webhook_dropped = Counter(
            "roomcast_webhook_events_dropped",
            "Webhook events given up on, by reason (expired: retried for --webhook-retry-for; "
            "overflow: past --webhook-max-pending)",
            ["reason"],
            registry=self.registry,
        )
        self.webhook_seconds = Histogram(
            "roomcast_webhook_request_seconds",
            "Time the receiver took to answer a webhook request",
            registry=self.registry,
        )
        self.proxy_calls = Counter(
            "roomcast_proxy_calls",
            "Proxy calls to the backend, by kind (connect, join, publish) and result "
            "(allowed, unauthenticated, forbidden, unavailable)",
            ["kind", "result"],
            registry=self.registry,
        )
        self.proxy_seconds = Histogram(
            "roomcast_proxy_call_seconds",
            "Time the backend took to answer a proxy call, by kind",
            ["kind"],
            registry=self.registry,
        )

        self.tasks = Gauge(
            "roomcast_tasks",
            "asyncio tasks alive in this process (leak check)",
            registry=self.registry,
        )
        self.tasks.set_function(_task_count)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


def _task_count() -> float:
    try:
        return float(len(asyncio.all_tasks()))
    except RuntimeError:  # no running loop
        return 0.0
