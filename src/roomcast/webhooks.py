"""Webhooks: the node's events, kept in the broker's outbox and posted to `--webhook-url`.

The event bus hands every member event (and `MessagePublished` when it is sent) to
:class:`Webhooks`, in the order they happen. A writer task appends them to the broker's
outbox (:class:`~roomcast.brokers.WebhookOutbox`; in Redis on `redis://`, so the crash of
this node loses nothing already appended), in one step per shard with each room's occupancy
count: that step decides `room.occupied` / `room.vacated` once, cluster-wide, and they are
published on the event bus (`RoomOccupied` / `RoomVacated`) by the node whose event decided
them. Delivery tasks, one per outbox shard whose lease this node holds, post each shard's
oldest events in batches, in order, retry with exponential backoff and jitter, and delete
them once delivered (or dropped after `--webhook-retry-for` seconds).

docs/webhooks.md is the user-facing reference (event types, signature, guarantees).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import logging
import random
import secrets
import time
from typing import Any, Literal

import httpx
import orjson

from .brokers import OutboxEntry, WebhookOutbox
from .errors import BrokerUnavailable
from .events import (
    Event,
    EventBus,
    MemberJoined,
    MemberLeft,
    MessagePublished,
    RoomOccupied,
    RoomVacated,
)
from .log import log_event
from .metrics import Metrics
from .settings import Settings

__all__ = ["EVENT_TYPES", "Webhooks", "record", "signature"]

EVENT_TYPES: dict[type[Event], str] = {
    RoomOccupied: "room.occupied",
    RoomVacated: "room.vacated",
    MemberJoined: "member.joined",
    MemberLeft: "member.left",
    MessagePublished: "message.published",
}
"""The webhook `type` of each event class."""

POLL_INTERVAL = 0.5
"""Seconds between two looks at a held shard when nothing was appended on this node (events
appended by other nodes are found this late at most)."""
APPEND_BATCH = 512
"""Events appended to one shard in one step at most."""
APPEND_RETRY = (0.2, 5.0)
"""First and longest wait, in seconds, before appending again while the broker is away."""


def record(event: Event, node_id: str, event_id: str, time_ms: int) -> dict[str, Any]:
    """The webhook JSON of `event` (docs/webhooks.md, "Events").

    Args:
        event: the event.
        node_id: the node it names when the event names none (`MessagePublished`).
        event_id: its unique id (receivers deduplicate by it).
        time_ms: when it happened, UNIX milliseconds.
    """
    node = getattr(event, "node_id", None) or node_id
    out: dict[str, Any] = {
        "id": event_id,
        "type": EVENT_TYPES[type(event)],
        "room": event.room,
        "node": node,
        "time": time_ms,
    }
    if isinstance(event, MemberJoined):
        out["username"] = event.username
    elif isinstance(event, MemberLeft):
        out["username"] = event.username
        out["reason"] = event.reason
    elif isinstance(event, MessagePublished):
        out["topic"] = event.topic
        out["from"] = event.sender
        out["offset"] = event.offset
        out["payload"] = event.payload
        if event.to is not None:
            out["to"] = event.to
    return out


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The `X-Roomcast-Signature` value: `sha256=` + the hex HMAC-SHA256 of
    `"<timestamp>.<body>"` keyed with `secret`."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


Result = Literal["ok", "status_3xx", "status_4xx", "status_5xx", "timeout", "error"]


class Webhooks:
    """The outbox writer and the delivery tasks of one node.

    Args:
        node_id: this node's id (event ids, the `node` of a message event, leases).
        settings: the node's settings (`webhook_*`, `presence_ttl` for the shard leases).
        outbox: the broker, as a webhook outbox.
        events: the node's event bus (tapped; `RoomOccupied`/`RoomVacated` published on it).
        metrics: the node's metrics.
    """

    def __init__(
        self,
        node_id: str,
        settings: Settings,
        outbox: WebhookOutbox,
        events: EventBus,
        metrics: Metrics,
    ) -> None:
        self.node_id = node_id
        self.settings = settings
        self.outbox = outbox
        self.events = events
        self.metrics = metrics
        self.url = settings.webhook_url
        wanted = set(settings.webhook_events) if self.url else set()
        self._wanted = frozenset(t for t, name in EVENT_TYPES.items() if name in wanted)
        self._ids = itertools.count(1)
        self._id_prefix = secrets.token_hex(6)
        self._pending: list[tuple[OutboxEntry, Event]] = []
        self._appended = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self._token = secrets.token_hex(8)
        self._held: set[int] = set()
        self._wakes = [asyncio.Event() for _ in range(outbox.outbox_shards)]
        self._holding = [asyncio.Event() for _ in range(outbox.outbox_shards)]
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None
        self.lease_ttl = max(1.0, settings.presence_ttl * 2 / 3)
        self.lease_tick = max(0.2, settings.presence_ttl / 6)

    # the writer

    def start(self) -> None:
        """Tap the event bus and start the writer (and, with a URL, the delivery tasks)."""
        types: set[type[Event]] = {MemberJoined, MemberLeft}
        if MessagePublished in self._wanted:
            types.add(MessagePublished)
        self.events.tap(self._on_event, frozenset(types))
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._write_loop(), name="roomcast-webhook-writer"))
        if self.url is None:
            return
        self._client = httpx.AsyncClient(
            timeout=self.settings.webhook_timeout,
            limits=httpx.Limits(
                max_connections=self.outbox.outbox_shards + 2,
                max_keepalive_connections=self.outbox.outbox_shards + 2,
            ),
        )
        self._tasks.append(loop.create_task(self._lease_loop(), name="roomcast-webhook-leases"))
        for shard in range(self.outbox.outbox_shards):
            self._tasks.append(
                loop.create_task(self._deliver_loop(shard), name=f"roomcast-webhook-{shard}")
            )

    def _next_id(self) -> str:
        return f"{self._id_prefix}-{next(self._ids):x}"

    def _json(self, event: Event, now_ms: int) -> bytes:
        if type(event) not in self._wanted:
            return b""
        return orjson.dumps(record(event, self.node_id, self._next_id(), now_ms))

    def _on_event(self, event: Event) -> None:
        """The event bus's tap: queue `event` for the outbox, in order."""
        now_ms = int(time.time() * 1000)
        room_record = b""
        if isinstance(event, MemberJoined):
            kind: Literal["joined", "left", "other"] = "joined"
            room_record = self._json(RoomOccupied(event.room, self.node_id), now_ms)
        elif isinstance(event, MemberLeft):
            kind = "left"
            room_record = self._json(RoomVacated(event.room, self.node_id), now_ms)
        else:
            kind = "other"
        entry = OutboxEntry(kind, event.room, self._json(event, now_ms), room_record)
        pending = self._pending
        pending.append((entry, event))
        if len(pending) > self.settings.webhook_max_pending:
            # The broker has been away for long: the oldest events go, counted.
            del pending[0]
            self.metrics.webhook_dropped.labels("overflow").inc()
        self._idle.clear()
        self._appended.set()

    async def _write_loop(self) -> None:
        wait = APPEND_RETRY[0]
        while True:
            await self._appended.wait()
            self._appended.clear()
            while self._pending:
                try:
                    await self._append_some()
                    wait = APPEND_RETRY[0]
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log_event("webhook.append_failed", level=30, error=repr(exc))
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await self._stop.wait()
                    if self._stopping:
                        return
                    wait = min(wait * 2, APPEND_RETRY[1])
            self._idle.set()

    async def _append_some(self) -> None:
        """Append the oldest pending events of the first pending event's shard (in order:
        events of other shards may wait, a room's never overtake each other)."""
        pending = self._pending
        shard = self.outbox.shard_of(pending[0][0].room)
        taken = [i for i, (e, _) in enumerate(pending) if self.outbox.shard_of(e.room) == shard][
            :APPEND_BATCH
        ]
        items = [pending[i] for i in taken]
        changes, dropped = await self.outbox.append_events(
            [entry for entry, _ in items],
            self.settings.webhook_max_pending,
            sending=self.settings.webhook_batch_size,
        )
        for i in reversed(taken):
            del pending[i]
        if dropped:
            self.metrics.webhook_dropped.labels("overflow").inc(dropped)
            log_event("webhook.overflow", level=30, shard=shard, dropped=dropped)
        for change in changes:
            event = items[abs(change) - 1][1]
            cls = RoomOccupied if change > 0 else RoomVacated
            self.events.publish(cls(event.room, self.node_id))
        self._wakes[shard].set()

    # delivery

    async def _lease_loop(self) -> None:
        """Take and renew the leases of the outbox's shards (every node tries each)."""
        while not self._stopping:
            for shard in range(self.outbox.outbox_shards):
                try:
                    held = await self.outbox.claim_shard(shard, self._token, self.lease_ttl)
                except BrokerUnavailable:
                    held = False
                if held:
                    if shard not in self._held:
                        log_event("webhook.shard_held", shard=shard, node_id=self.node_id)
                    self._held.add(shard)
                    self._holding[shard].set()
                else:
                    self._held.discard(shard)
                    self._holding[shard].clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.lease_tick * random.uniform(0.8, 1.0)):
                    await self._stop.wait()

    async def _deliver_loop(self, shard: int) -> None:
        batch = self.settings.webhook_batch_size
        wake = self._wakes[shard]
        while not self._stopping:
            await self._holding[shard].wait()
            try:
                entries = await self.outbox.read_events(shard, batch)
            except BrokerUnavailable:
                entries = []
            if not entries:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(POLL_INTERVAL):
                        await wake.wait()
                wake.clear()
                continue
            try:
                await self._send(shard, entries)
            except BrokerUnavailable as exc:
                # Not acknowledged: sent again later (receivers deduplicate by id).
                log_event("webhook.ack_failed", level=30, shard=shard, error=repr(exc))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(APPEND_RETRY[1]):
                        await self._stop.wait()

    async def _send(self, shard: int, entries: list[tuple[str, bytes]]) -> None:
        """Post one batch until it is delivered, dropped, or this node loses the shard."""
        settings = self.settings
        body = b'{"events":[' + b",".join(r for _, r in entries) + b"]}"
        ids = [entry_id for entry_id, _ in entries]
        first = time.monotonic()
        attempt = 0
        while True:
            result = await self._post(body)
            self.metrics.webhook_requests.labels(result).inc()
            if result == "ok":
                await self.outbox.ack_events(shard, ids)
                self.metrics.webhook_delivered.inc(len(ids))
                return
            elapsed = time.monotonic() - first
            if elapsed >= settings.webhook_retry_for:
                await self.outbox.ack_events(shard, ids)
                self.metrics.webhook_dropped.labels("expired").inc(len(ids))
                log_event(
                    "webhook.dropped",
                    level=logging.WARNING,
                    shard=shard,
                    events=len(ids),
                    attempts=attempt + 1,
                    result=result,
                )
                return
            if self._stopping or shard not in self._held:
                return  # the shard's next holder sends it
            # Exponential backoff with full jitter, and one last attempt at retry-for.
            ceiling = min(settings.webhook_retry_max, settings.webhook_retry_min * 2**attempt)
            delay = random.uniform(ceiling / 2, ceiling)
            delay = min(delay, settings.webhook_retry_for - elapsed)
            if attempt == 0 or attempt & (attempt - 1) == 0:
                log_event(
                    "webhook.retry", level=30, shard=shard, attempt=attempt + 1, result=result
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, delay)):
                    await self._stop.wait()
            if self._stopping:
                return
            attempt += 1
            self.metrics.webhook_retries.inc()

    async def _post(self, body: bytes) -> Result:
        client, url = self._client, self.url
        if client is None or url is None:  # stopped meanwhile
            return "error"
        timestamp = str(int(time.time()))
        headers = {"content-type": "application/json", "x-roomcast-timestamp": timestamp}
        if self.settings.webhook_secret is not None:
            headers["x-roomcast-signature"] = signature(
                self.settings.webhook_secret, timestamp, body
            )
        started = time.monotonic()
        try:
            # httpx's timeout bounds each read, not the whole answer (see proxy.py).
            async with asyncio.timeout(self.settings.webhook_timeout):
                response = await client.post(url, content=body, headers=headers)
        except (httpx.TimeoutException, TimeoutError):
            return "timeout"
        except httpx.HTTPError:
            return "error"
        finally:
            self.metrics.webhook_seconds.observe(time.monotonic() - started)
        status = response.status_code
        if 200 <= status < 300:
            return "ok"
        if status >= 500:
            return "status_5xx"
        return "status_4xx" if status >= 400 else "status_3xx"

    # stopping

    async def stop(self, timeout: float) -> None:
        """Append what is pending (bounded by `timeout`), stop delivering, give the shards'
        leases back so that another node takes over at once."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        self._stopping = True
        self._stop.set()
        self.events.tap(None)
        for event in (*self._wakes, *self._holding):
            event.set()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=max(0.1, timeout))
        for shard in list(self._held):
            with contextlib.suppress(BrokerUnavailable):
                await self.outbox.release_shard(shard, self._token)
        self._held.clear()
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()
