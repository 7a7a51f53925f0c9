"""Prometheus metrics of one node, in a registry of its own (several apps may share a process)."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics"]


class Metrics:
    """The counters and gauges a node exports at `/metrics`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.connections = Gauge(
            "roomcast_connections", "Open WebSocket connections", registry=self.registry
        )
        self.rooms = Gauge("roomcast_rooms", "Rooms with local members", registry=self.registry)
        self.frames_in = Counter(
            "roomcast_frames_in", "Frames received from clients", registry=self.registry
        )
        self.frames_out = Counter(
            "roomcast_frames_out", "Frames queued to clients", registry=self.registry
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
        self.publications = Counter(
            "roomcast_publications", "Messages published to rooms", registry=self.registry
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
