"""Prometheus metrics of one node, in a registry of its own (several apps may share a process)."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

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
