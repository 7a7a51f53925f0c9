"""Node stats for operators: each node's small periodic stats message, and the cluster view
built from every node's message (the admin page and `roomcast top` show it).

A node measures itself every `--stats-interval` seconds (connections, rooms, frames in and out
per second, its busiest rooms, server closes by close code) and puts the message in the
broker when the broker can hold it (:class:`~roomcast.brokers.StatsStore`), kept for
`--presence-ttl` seconds: a node that dies drops out of the view within the presence bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any, Protocol

import orjson

from .brokers import Broker, StatsStore
from .errors import BrokerUnavailable
from .log import log_event
from .metrics import Metrics
from .rooms import LocalRooms
from .settings import Settings

__all__ = ["TOP_ROOMS", "Measured", "StatsPublisher", "cluster_view"]

TOP_ROOMS = 20
"""Rooms a node reports (its busiest) and the cluster view lists."""
DROP_TIMEOUT = 1.0
"""Seconds a stopping node waits for the broker to drop its message."""


class Measured(Protocol):
    """What the stats read of a node (the node itself; stats.py does not import it)."""

    publish_counts: dict[str, int] | None
    """Publishes per room since the last measure, counted while the stats run."""

    @property
    def node_id(self) -> str:
        """The node's id."""

    @property
    def settings(self) -> Settings:
        """The node's settings."""

    @property
    def metrics(self) -> Metrics:
        """The node's Prometheus metrics."""

    @property
    def rooms(self) -> LocalRooms:
        """The node's local rooms and members."""

    @property
    def connections(self) -> Mapping[str, object]:
        """The node's open connections."""

    @property
    def broker(self) -> Broker:
        """The node's broker."""


def _samples(node: Measured) -> tuple[float, float, dict[str, int]]:
    """Frames in, frames out, and server closes by close code, from the node's metrics."""
    frames_in = frames_out = 0.0
    closes: dict[str, int] = {}
    for metric in node.metrics.registry.collect():
        for sample in metric.samples:
            if sample.name == "roomcast_frames_in_total":
                frames_in = sample.value
            elif sample.name == "roomcast_frames_out_total":
                frames_out = sample.value
            elif sample.name == "roomcast_disconnects_total":
                closes[sample.labels["code"]] = int(sample.value)
    return frames_in, frames_out, closes


def _busiest(node: Measured, published: dict[str, int], seconds: float) -> list[dict[str, Any]]:
    """This node's busiest rooms: by messages published from here per second, then members."""
    rows: dict[str, dict[str, Any]] = {}
    for local in node.rooms:
        rows[local.room] = {"roomID": local.room, "members": len(local.members), "rate": 0.0}
    for room, count in published.items():
        row = rows.setdefault(room, {"roomID": room, "members": 0, "rate": 0.0})
        row["rate"] = round(count / seconds, 2)
    ranked = sorted(rows.values(), key=lambda r: (-r["rate"], -r["members"], r["roomID"]))
    return ranked[:TOP_ROOMS]


class StatsPublisher:
    """Measures one node every `interval` seconds and puts its stats message in the broker.

    While it runs, the node counts its publishes per room in `publish_counts`.

    Args:
        node: the node measured.
        interval: seconds between two messages.
    """

    def __init__(self, node: Measured, interval: float) -> None:
        self.node = node
        self.interval = interval
        self.started = time.time()
        self.latest: dict[str, Any] = {}
        """The last stats message of this node (empty before the first measure)."""
        self._task: asyncio.Task[None] | None = None
        self._last = (time.monotonic(), 0.0, 0.0)

    def start(self) -> None:
        """Measure now and every `interval` seconds, until :meth:`stop`."""
        if self._task is None:
            self.node.publish_counts = {}
            frames_in, frames_out, _ = _samples(self.node)
            self._last = (time.monotonic(), frames_in, frames_out)
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop measuring and drop this node's message, so that the view loses it at once
        (when the broker cannot be reached, it expires by itself)."""
        task, self._task = self._task, None
        self.node.publish_counts = None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        broker = self.node.broker
        if isinstance(broker, StatsStore):
            with contextlib.suppress(Exception):
                async with asyncio.timeout(DROP_TIMEOUT):
                    await broker.drop_stats(self.node.node_id)

    def measure(self) -> dict[str, Any]:
        """Measure the node since the previous measure: its stats message."""
        node = self.node
        now = time.monotonic()
        frames_in, frames_out, closes = _samples(node)
        then, last_in, last_out = self._last
        seconds = max(now - then, 1e-3)
        self._last = (now, frames_in, frames_out)
        published = node.publish_counts or {}
        if node.publish_counts is not None:
            node.publish_counts = {}
        self.latest = {
            "node": node.node_id,
            "started": round(self.started, 3),
            "time": round(time.time(), 3),
            "connections": len(node.connections),
            "rooms": len(node.rooms),
            "in": round((frames_in - last_in) / seconds, 2),
            "out": round((frames_out - last_out) / seconds, 2),
            "published": round(sum(published.values()) / seconds, 2),
            "broker": node.broker.available,
            "disconnects": closes,
            "busiest": _busiest(node, published, seconds),
        }
        return self.latest

    async def _run(self) -> None:
        store = self.node.broker if isinstance(self.node.broker, StatsStore) else None
        ttl = self.node.settings.presence_ttl
        while True:
            stats = self.measure()
            if store is not None:
                try:
                    await store.put_stats(self.node.node_id, orjson.dumps(stats), ttl)
                except BrokerUnavailable:
                    pass  # the broker's own state change is logged; the next put retries
                except Exception:
                    log_event("stats.put_failed", level=30, exc_info=True)
            await asyncio.sleep(self.interval)

    async def cluster(self) -> dict[str, Any]:
        """Every live node's latest message (this node's own at least), as :func:`cluster_view`."""
        messages: dict[str, dict[str, Any]] = {}
        broker = self.node.broker
        if isinstance(broker, StatsStore):
            with contextlib.suppress(BrokerUnavailable):
                for node_id, raw in (await broker.all_stats()).items():
                    with contextlib.suppress(orjson.JSONDecodeError):
                        message = orjson.loads(raw)
                        if isinstance(message, dict):
                            messages[node_id] = message
        # This node's own figures are the freshest it has (and the only ones without a store).
        messages[self.node.node_id] = self.latest or self.measure()
        return cluster_view(list(messages.values()), time.time())


def cluster_view(messages: list[dict[str, Any]], now: float) -> dict[str, Any]:
    """The cluster as the admin page and `roomcast top` show it, from each node's message.

    Returns:
        `{"time", "nodes": [...], "totals": {...}, "rooms": [...], "disconnects": {...}}`:
        the nodes sorted by id, each with its `uptime`; the sums over the nodes; the busiest
        rooms (member counts and publish rates summed over the nodes that reported them);
        server closes by close code since each node started.
    """
    nodes = sorted(messages, key=lambda m: str(m.get("node", "")))
    rooms: dict[str, dict[str, Any]] = {}
    closes: Counter[str] = Counter()
    totals = {"nodes": len(nodes), "connections": 0, "in": 0.0, "out": 0.0, "published": 0.0}
    for message in nodes:
        message["uptime"] = round(max(0.0, now - float(message.get("started", now))), 1)
        for key in ("connections", "in", "out", "published"):
            totals[key] += message.get(key, 0)
        closes.update({str(k): int(v) for k, v in message.get("disconnects", {}).items()})
        for row in message.get("busiest", []):
            merged = rooms.setdefault(row["roomID"], {"roomID": row["roomID"], "members": 0})
            merged["members"] += row.get("members", 0)
            merged["rate"] = round(merged.get("rate", 0.0) + row.get("rate", 0.0), 2)
    for key in ("in", "out", "published"):
        totals[key] = round(totals[key], 2)
    busiest = sorted(rooms.values(), key=lambda r: (-r["rate"], -r["members"], r["roomID"]))
    return {
        "time": round(now, 3),
        "nodes": nodes,
        "totals": totals,
        "rooms": busiest[:TOP_ROOMS],
        "disconnects": dict(sorted(closes.items())),
    }
