"""The Redis broker's subscription: where a broker message arrives on a node.

One connection carries every room channel the node serves. It is managed by hand, not by
redis-py's `PubSub`, for three reasons:

- `subscribe` waits for Redis to confirm each SUBSCRIBE (a join must not miss a message
  published after it was admitted), which `PubSub` does not offer;
- messages are read undecoded (`disable_decoding=True`) and split once (wire.py), with no
  per-message dict;
- reconnecting is part of the node's fault handling: resubscribe every room, then the
  presence upkeep (presence.py), and only then turn available and repair rooms from history.

On a Redis Cluster the same class holds one shard's subscription in its sharded form
(`SSUBSCRIBE`, one command per channel since several would have to share a slot), and tells
its owner (cluster_subscriber.py) when Redis ends a room's subscription it did not ask to end
(`sunsubscribe`: the slot moved to another shard).

A heartbeat PINGs the connection when it is quiet and drops it when a PING stays unanswered
(a frozen or cut-off Redis does not close the socket), so the reader loop reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError

from ...errors import BrokerUnavailable
from ...log import log_event
from ..base import BrokerListener, Publication
from . import redispy, wire
from .calls import FAULTS, pool_from_url, unavailable
from .publishing import Deliveries

__all__ = ["SUBSCRIBE_TIMEOUT", "Subscriber"]

SUBSCRIBE_TIMEOUT = 5.0
"""Seconds Redis has to confirm a SUBSCRIBE."""
READ_BATCH = 1024
"""Messages handled at most after one read before the loop gives way to other work."""


class Subscriber:
    """The subscription connection of one node, and its reader loop.

    Args:
        url: the broker URL.
        channel_prefix: the start of the room channels (wire.channel_prefix).
        presence_ttl: sets the heartbeat interval (`presence_ttl / 6`, 0.5 to 5 s).
        deliveries: told of every publication delivered (publish waits for its own).
        on_connected: called once the connection is up and every room resubscribed, with the
            number of rooms; the broker turns available when it returns.
        on_lost: called when the connection failed or was lost, with the cause (before it
            is dropped: the broker turns unavailable first).
        sharded: use sharded pub/sub (`SSUBSCRIBE`, a Redis Cluster shard).
    """

    def __init__(
        self,
        url: str,
        *,
        channel_prefix: str,
        presence_ttl: float,
        deliveries: Deliveries,
        on_connected: Callable[[int], Awaitable[None]],
        on_lost: Callable[[BaseException], None],
        sharded: bool = False,
    ) -> None:
        # The socket timeout bounds the handshake; reads of messages wait without limit.
        self._pool = pool_from_url(url, protocol=2)
        self._channel_prefix = channel_prefix
        self._heartbeat_interval = min(5.0, max(0.5, presence_ttl / 6))
        self._deliveries = deliveries
        self._on_connected = on_connected
        self._on_lost = on_lost
        self.node_id = ""
        self.listener: BrokerListener | None = None
        self._rooms: dict[str, bytes] = {}
        """Rooms this node wants to receive, with their channel."""
        self._channels: dict[bytes, str] = {}
        """Channel -> room, for every channel that may still deliver (until UNSUBSCRIBE)."""
        self._confirmations: dict[bytes, list[asyncio.Future[None]]] = {}
        """Subscribers waiting for Redis to confirm a SUBSCRIBE, per channel."""
        self._conn: AbstractConnection | None = None
        self._send_lock = asyncio.Lock()
        self._last_read = 0.0
        self._heartbeat: asyncio.Task[None] | None = None
        self._bad_messages = 0
        self._sharded = sharded
        prefix = b"s" if sharded else b""
        self._subscribe_command = "SSUBSCRIBE" if sharded else "SUBSCRIBE"
        self._unsubscribe_command = "SUNSUBSCRIBE" if sharded else "UNSUBSCRIBE"
        self._message_kind = prefix + b"message"
        self._subscribed_kind = prefix + b"subscribe"
        self._unsubscribed_kind = prefix + b"unsubscribe"
        self._unsubscribing: dict[bytes, int] = {}
        """UNSUBSCRIBEs sent and not yet confirmed, per channel (sharded: one that was not
        asked for means the slot moved)."""
        self.on_ended: Callable[[str], None] | None = None
        """Called with a room whose subscription Redis ended unasked (sharded)."""

    @property
    def connected(self) -> bool:
        """Whether the subscription connection is up."""
        return self._conn is not None

    def serves(self, room: str) -> bool:
        """Whether this node receives `room`."""
        return room in self._rooms

    async def subscribe(self, room: str) -> None:
        """Subscribe to the room's channel and wait for Redis to confirm it."""
        if self._conn is None:
            raise unavailable()
        channel = wire.channel(self._channel_prefix, room)
        self._rooms[room] = channel
        self._channels[channel] = room
        waiter = asyncio.get_running_loop().create_future()
        self._confirmations.setdefault(channel, []).append(waiter)
        try:
            await self._send(self._subscribe_command, channel)
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT):
                await waiter
        except (*FAULTS, RedisError, BrokerUnavailable) as exc:
            self._rooms.pop(room, None)
            raise BrokerUnavailable(f"cannot subscribe to room {room!r}: {exc}") from None

    async def unsubscribe(self, room: str) -> None:
        """Stop receiving the room's channel."""
        channel = self._rooms.pop(room, None)
        self._deliveries.forget(room)
        if channel is None:
            return
        # Counted before it is sent: its confirmation may be read while the send awaits.
        self._unsubscribing[channel] = self._unsubscribing.get(channel, 0) + 1
        try:
            await self._send(self._unsubscribe_command, channel)
        except (*FAULTS, RedisError, BrokerUnavailable):
            self._unsubscribed(channel)

    def _unsubscribed(self, channel: bytes) -> int:
        """Count one UNSUBSCRIBE of `channel` as answered; how many were outstanding."""
        asked = self._unsubscribing.get(channel, 0)
        if asked > 1:
            self._unsubscribing[channel] = asked - 1
        else:
            self._unsubscribing.pop(channel, None)
        return asked

    def adopt(self, room: str) -> None:
        """Take `room` in without subscribing now: it is subscribed on the next (re)connect
        (a room moved here from another shard; its owner subscribes it when this one is up)."""
        channel = wire.channel(self._channel_prefix, room)
        self._rooms[room] = channel
        self._channels[channel] = room

    def forget(self, room: str) -> None:
        """Let `room` go without a word to Redis (its slot moved away from this shard)."""
        self._rooms.pop(room, None)

    async def _send(self, *args: Any) -> None:
        # One lock, taken in call order: SUBSCRIBE/UNSUBSCRIBE reach Redis in the order the
        # node asked for them.
        async with self._send_lock:
            conn = self._conn
            if conn is None:
                raise unavailable()
            await conn.send_command(*args, check_health=False)

    # the reader loop

    async def run(self, closing: Callable[[], bool]) -> None:
        """Keep one subscription connection: connect, resubscribe, read; on loss, retry with
        exponential backoff and jitter (0.1 s to 5 s) until `closing()`."""
        attempt = 0
        while not closing():
            try:
                await self._connect()
                attempt = 0
                await self._read()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._on_lost(exc)
                await self.drop()
            attempt += 1
            delay = min(5.0, 0.1 * 2 ** min(attempt, 6))
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    async def _connect(self) -> None:
        conn = self._pool.make_connection()  # type: ignore[no-untyped-call]
        try:
            await conn.connect()
        except BaseException:
            # Not yet this subscriber's (close() would not find it), and the pool does not
            # track what make_connection made: a socket opened before a cancellation is
            # closed here.
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)
            raise
        self._conn = conn
        self._last_read = time.monotonic()
        self._heartbeat = asyncio.get_running_loop().create_task(
            self._beat(conn), name="roomcast-redis-heartbeat"
        )
        # Resubscribe every room this node serves before the broker turns available.
        rooms = list(self._rooms.values())
        if rooms:
            if self._sharded:
                for channel in rooms:
                    await self._send(self._subscribe_command, channel)
            else:
                await self._send(self._subscribe_command, *rooms)
            waiting = set(rooms)
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT):
                while waiting:
                    response = await conn.read_response(timeout=math.inf, disable_decoding=True)
                    if response[0] == self._subscribed_kind:
                        waiting.discard(response[1])
                    self._handle(response)
        await self._on_connected(len(rooms))

    async def _read(self) -> None:
        conn = self._conn
        if conn is None:
            raise unavailable()
        handle, buffered = self._handle, redispy.buffered_replies
        while True:
            response = await conn.read_response(timeout=math.inf, disable_decoding=True)
            self._last_read = time.monotonic()
            handle(response)
            # What came in the same read, handled now rather than one awaited read each.
            for response in buffered(conn, READ_BATCH):
                handle(response)

    async def _beat(self, conn: AbstractConnection) -> None:
        """PING the subscription connection when it is quiet; drop it when a PING stays
        unanswered for two intervals.

        Silence is counted from a PING sent, not from the last message: a node that was
        itself stalled (no CPU for a while) sends a PING first, and does not take its own
        stall for Redis being silent.
        """
        interval = self._heartbeat_interval
        ping_sent = 0.0  # when the PING not yet answered (by a pong or any message) went out
        while self._conn is conn:
            await asyncio.sleep(interval)
            now = time.monotonic()
            if ping_sent and self._last_read >= ping_sent:
                ping_sent = 0.0
            if ping_sent and now - ping_sent > 2 * interval:
                quiet = now - self._last_read
                log_event("broker.silent", level=30, node_id=self.node_id, seconds=round(quiet))
                await conn.disconnect(nowait=True)
                return
            if not ping_sent and now - self._last_read > interval:
                ping_sent = now
                with contextlib.suppress(*FAULTS, RedisError, BrokerUnavailable):
                    await self._send("PING")

    async def drop(self) -> None:
        """Close the connection (if any) and fail the SUBSCRIBEs waiting for it."""
        conn, self._conn = self._conn, None
        heartbeat, self._heartbeat = self._heartbeat, None
        if heartbeat is not None and heartbeat is not asyncio.current_task():
            heartbeat.cancel()
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)
        for waiters in self._confirmations.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(BrokerUnavailable("subscription connection lost"))
                    waiter.exception()
        self._confirmations.clear()
        self._unsubscribing.clear()
        self._deliveries.reset()

    async def close(self) -> None:
        """Drop the connection and disconnect the pool."""
        await self.drop()
        await self._pool.disconnect()

    # what arrives

    def _handle(self, response: Any) -> None:
        kind = response[0]
        if kind == self._message_kind:
            self._dispatch(response[1], response[2])
        elif kind == self._subscribed_kind:
            for waiter in self._confirmations.pop(response[1], ()):
                if not waiter.done():
                    waiter.set_result(None)
        elif kind == self._unsubscribed_kind:
            channel = response[1]
            asked = self._unsubscribed(channel)
            room = self._channels.get(channel)
            if self._sharded and not asked and room in self._rooms and room is not None:
                # Redis ended it: the slot moved (a failover, a resharding).
                self._rooms.pop(room, None)
                if self.on_ended is not None:
                    self.on_ended(room)
            if self._channels.get(channel) not in self._rooms:
                self._channels.pop(channel, None)

    def _dispatch(self, channel: bytes, data: bytes) -> None:
        room = self._channels.get(channel)
        listener = self.listener
        if room is None or room not in self._rooms or listener is None:
            return
        try:
            message = wire.decode(room, data)
        except wire.WireError as exc:
            # Someone else publishes on roomcast's channels: skip it, say so now and then.
            self._bad_messages += 1
            if self._bad_messages & (self._bad_messages - 1) == 0:  # 1, 2, 4, 8, ...
                log_event(
                    "broker.bad_message",
                    level=30,
                    node_id=self.node_id,
                    room=room,
                    count=self._bad_messages,
                    error=str(exc),
                )
            return
        if isinstance(message, Publication):
            listener.on_publication(message)
            if not message.ephemeral:
                self._deliveries.delivered(room, message.offset)
        elif not (
            message.kind == "leave"
            and message.reason == "node_lost"
            and message.node_id == self.node_id
        ):
            # (A `node_lost` leave from this node was announced here through on_members_lost.)
            listener.on_signal(message)
