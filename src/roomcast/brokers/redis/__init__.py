"""The Redis broker: cross-node delivery, cluster-wide presence and history in one Redis
(`redis://`) or in a Redis Cluster (`redis+cluster://`).

`RedisBroker` is a facade over the parts, one module each:

- wire.py: key and channel names, the messages between nodes (where one is parsed);
- scripts.py: the Lua scripts, each one atomic step;
- calls.py: the command connections (a bounded pool) and the registered scripts;
- cluster.py, cluster_subscriber.py: the Redis Cluster URL and client, one subscription per
  shard that follows the slot map; redispy.py: what that needs of redis-py's cluster client;
- publishing.py: batched, pipelined publishes and the wait for a node's own delivery;
- subscriber.py: the subscription connection, its reader loop and heartbeat;
- presence.py: presence entries, the node's lease, the sweeper, orphans;
- stats.py: each node's stats message (the admin page's data);
- outbox.py: the webhook outbox, a stream per shard with its lease.

See docs/architecture.md ("Cluster") for the keys, channels, message format and faults.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Coroutine, Sequence
from functools import partial
from typing import Any

from redis.asyncio import RedisCluster
from redis.exceptions import RedisError

from ...errors import BrokerUnavailable, ConfigError
from ...log import log_event, redact_url
from ...protocol import IDEMPOTENCY_WINDOW
from ...room_classes import RoomClasses
from ..base import BrokerListener, HistoryPage, OutboxEntry, Publication, Signal
from . import wire
from .calls import Calls, unavailable
from .cluster import CLUSTER_SCHEMES
from .cluster_subscriber import ClusterSubscriber
from .layout import LayoutMismatch, check_layout
from .outbox import OUTBOX_SHARDS, Outbox
from .presence import Presence
from .publishing import Deliveries, Publishing
from .stats import all_stats, drop_stats, put_stats
from .subscriber import Subscriber

__all__ = ["RedisBroker"]

CLOSE_TIMEOUT = 2.0
"""Seconds each step of `close` may take: stopping its tasks, leaving presence, disconnecting."""
PING_TIMEOUT = 1.0
"""Seconds `ping` (`/readyz`) waits for Redis to answer."""
START_TIMEOUT = 5.0
"""Bound, in seconds, on how long `start` waits for the first attempt to connect."""
QUIET_LOG = 300.0
"""Seconds after which a failure to reconnect is logged even when its attempt's number is not
a power of two (attempts 1, 2, 4, 8, ... are logged)."""


class RedisBroker:
    """Delivery, presence and history shared by every node through one Redis or one Redis
    Cluster.

    Args:
        url: `redis://[:PASSWORD@]HOST:PORT/DB` (or `rediss://` for TLS), or
            `redis+cluster://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...]` (seed nodes).
        history_size: messages retained per room (a stream trimmed to exactly this many).
        history_ttl: seconds a room's retained messages live after its last publish; a room
            nobody is in loses its offset and epoch (its history) once nothing was published
            and nobody was present for as long.
        presence_ttl: bound, in seconds, on how long a dead node's members stay in presence.
        presence: hold a node lease, keep presence and sweep dead nodes; False for a
            publisher that holds no connections (it then needs no subscription either).
        classes: the room classes, whose `history_size` and `history_ttl` the scripts
            apply per room instead (their default class has the two above).
        idempotency_window: seconds a publish's idempotency key is remembered (a key of its
            own in the room's slot, with that time to live, set by the PUBLISH script).
        check_layout: at start (with presence), check that no running node lists this
            server among several (layout.py): a node given it alone while others shard rooms
            over a list would look for rooms where those nodes do not.
    """

    batches_publishes = True
    """Publishes asked for while a round trip is under way share the next one, in call order:
    a session may have several of one connection's publishes in flight (see session.py)."""

    def __init__(
        self,
        url: str,
        *,
        history_size: int = 100,
        history_ttl: float = 300.0,
        presence_ttl: float = 15.0,
        presence: bool = True,
        classes: RoomClasses | None = None,
        idempotency_window: float = IDEMPOTENCY_WINDOW,
        check_layout: bool = False,
    ) -> None:
        self.url = url
        self._check_layout = check_layout and not url.startswith(CLUSTER_SCHEMES)
        self.history_size = history_size
        self.history_ttl_ms = _ms(history_ttl)
        if classes is None:
            classes = RoomClasses(history_size=history_size, history_ttl=history_ttl)
        self._classes = classes
        self.presence_ttl = presence_ttl
        self.presence = presence
        self.node_id = ""
        self._calls = Calls(url, available=not presence)
        channel_prefix = wire.channel_prefix(self._calls.db)
        deliveries = Deliveries()
        self._presence = Presence(
            self._calls,
            channel_prefix=channel_prefix,
            presence_ttl=presence_ttl,
            history_ttl_ms=self._ttl_ms,
            longest_ttl_ms=_ms(classes.longest_ttl),
        )
        self._subscriber: Subscriber | ClusterSubscriber
        if isinstance(self._calls.redis, RedisCluster):
            self._subscriber = ClusterSubscriber(
                url,
                cluster=self._calls.redis,
                make_shard=partial(
                    Subscriber,
                    channel_prefix=channel_prefix,
                    presence_ttl=presence_ttl,
                    deliveries=deliveries,
                    sharded=True,
                ),
                on_connected=self._connected,
                on_lost=self._lost,
            )
        else:
            self._subscriber = Subscriber(
                url,
                channel_prefix=channel_prefix,
                presence_ttl=presence_ttl,
                deliveries=deliveries,
                on_connected=self._connected,
                on_lost=self._lost,
            )
        self._idempotency_window_ms = max(1, math.ceil(idempotency_window * 1000))
        self._publishing = Publishing(
            self._calls,
            channel_prefix=channel_prefix,
            retention=self._retention,
            keys=self._room_keys,
            idempotency_window_ms=self._idempotency_window_ms,
            deliveries=deliveries,
            serves=self._subscriber.serves,
        )
        self._outbox = Outbox(self._calls)
        self._listener: BrokerListener | None = None
        self._address = redact_url(url)
        self._tried = asyncio.Event()
        """Set once the first attempt to connect succeeded or failed."""
        self._failures = 0
        """Failed attempts since the last connection (the loss counts as the first)."""
        self._logged_at = 0.0
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        """The reader loop and the lease loop."""
        self._unlisted: set[str] = set()
        """Subscribed rooms of a class without presence: this node holds them (`_hold`)."""

    def _retention(self, room: str) -> tuple[int, int]:
        """The room's history size and ttl in milliseconds (its class's)."""
        cls = self._classes.resolve(room)
        return cls.history_size, _ms(cls.history_ttl)

    def _ttl_ms(self, room: str) -> int:
        return _ms(self._classes.resolve(room).history_ttl)

    def _room_keys(self, room: str) -> list[str]:
        return wire.room_keys(room, listed=self._classes.resolve(room).tracked)

    # lifecycle

    @property
    def available(self) -> bool:
        """Whether Redis is reachable and this node's subscriptions are live."""
        return self._calls.available

    async def start(self, node_id: str, listener: BrokerListener) -> None:
        """Connect; with presence, wait for the first attempt to connect (it fails at once
        when nothing listens, within the 2 s connect timeout when no answer comes), so a
        server listens without delay whether Redis is there or not.

        Raises:
            ConfigError: (`check_layout`) a running node lists this server among several.
        """
        self.node_id = node_id
        self._listener = listener
        self._presence.node_id = self._subscriber.node_id = node_id
        self._presence.listener = self._subscriber.listener = listener
        if not self.presence:
            return
        if self._check_layout:
            # Before anything of this node is written (its lease, its members).
            await self._check_place()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(
                self._subscriber.run(lambda: self._closing), name="roomcast-redis-reader"
            ),
            loop.create_task(self._presence.lease_loop(), name="roomcast-redis-lease"),
            loop.create_task(self._hold_loop(), name="roomcast-redis-hold"),
        ]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(START_TIMEOUT):
                await self._tried.wait()

    async def _check_place(self) -> None:
        """Record this server as the only one of this node's list, or refuse to start when a
        running node has it at a place in a list of several.

        Raises:
            ConfigError: a running node lists this server among several.
        """
        try:
            await check_layout(self.url, 0, 1, self.node_id)
        except LayoutMismatch as exc:
            raise ConfigError(f"broker {self._address}: {exc}") from None
        except Exception as exc:  # unreachable now: the subscription reports it
            log_event(
                "broker.layout_unchecked",
                level=30,
                node_id=self.node_id,
                address=self._address,
                error=repr(exc),
            )

    async def close(self) -> None:
        """Remove this node's presence entries and lease, then disconnect.

        Bounded in every state, at `CLOSE_TIMEOUT` per step: stopping the background tasks,
        leaving presence (when Redis is reachable), disconnecting. A step that has not
        finished in time is abandoned (cancelled, not awaited), so neither a silent Redis nor
        a call that does not give way to cancellation can hold up a shutdown.
        """
        self._closing = True
        tasks, self._tasks = list(self._tasks), []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT)
        if self.presence and self.node_id and self._calls.available:
            await _bounded(self._presence.leave_all(), "leave presence")
        self._calls.available = False
        await _bounded(self._subscriber.close(), "disconnect the subscription")
        await _bounded(self._calls.close(), "disconnect")

    async def _connected(self, rooms: int) -> None:
        await self._calls.load_scripts()
        await self._presence.on_connected()
        self._calls.available = True
        self._tried.set()
        self._failures = 0
        log_event("broker.connected", node_id=self.node_id, address=self._address, rooms=rooms)
        if self._listener is not None:
            self._listener.on_broker_state(True)

    def _lost(self, exc: BaseException) -> None:
        """The subscription failed to connect, or was lost: log it, with fewer lines the
        longer it lasts (attempts 1, 2, 4, 8, ..., and at least every `QUIET_LOG`)."""
        was = self._calls.available
        self._calls.available = False
        self._tried.set()
        self._failures += 1
        now = time.monotonic()
        power_of_two = self._failures & (self._failures - 1) == 0
        if was or power_of_two or now - self._logged_at >= QUIET_LOG:
            self._logged_at = now
            log_event(
                "broker.lost" if was else "broker.connect_failed",
                level=40 if was else 30,
                node_id=self.node_id,
                address=self._address,
                attempt=self._failures,
                error=repr(exc),
            )
        if was and self._listener is not None:
            self._listener.on_broker_state(False)

    # commands

    async def ping(self) -> None:
        """Check that Redis answers (within a second) and this node's subscriptions are live;
        on a Redis Cluster, that at least one master answers (a room whose shard is down
        answers `unavailable` on its own; docs/configuration.md tells the choice)."""
        redis = self._calls.redis

        async def ping() -> None:
            async with asyncio.timeout(PING_TIMEOUT):
                if not isinstance(redis, RedisCluster):
                    await redis.ping()
                    return
                answers = await asyncio.gather(
                    *(redis.ping(target_nodes=node) for node in redis.get_primaries()),
                    return_exceptions=True,
                )
                if not any(answer is True for answer in answers):
                    raise unavailable("no master of the Redis Cluster answers")

        await self._calls.call(ping)

    async def put_stats(self, node_id: str, stats: bytes, ttl: float) -> None:
        """Replace this node's stats message, kept `ttl` seconds; see `StatsStore`."""
        redis = self._calls.redis
        await self._calls.call(lambda: put_stats(redis, node_id, stats, ttl))

    async def all_stats(self) -> dict[str, bytes]:
        """Every live node's stats message; see `StatsStore`."""
        redis = self._calls.redis
        return await self._calls.call(lambda: all_stats(redis))

    async def drop_stats(self, node_id: str) -> None:
        """Remove this node's stats message; see `StatsStore`."""
        redis = self._calls.redis
        await self._calls.call(lambda: drop_stats(redis, node_id))

    async def publish(
        self,
        room: str,
        prefix: str,
        to: str | None = None,
        exclude: str | None = None,
        *,
        key: str | None = None,
    ) -> Publication:
        """Assign the next offset, retain and announce, in one script; see `Broker.publish`.
        With `key`, the same script checks and remembers it (the same atomic step).

        When this node serves the room, it returns once the message reached the local
        members (so a sender's `ack` follows its own message), or after a bounded wait.
        """
        return await self._publishing.publish_soon(room, prefix, to, exclude, key)

    def publish_soon(
        self,
        room: str,
        prefix: str,
        to: str | None = None,
        exclude: str | None = None,
        *,
        key: str | None = None,
    ) -> asyncio.Future[Publication]:
        """:meth:`publish`, queued for the next batch (see `DeferredPublish`)."""
        return self._publishing.publish_soon(room, prefix, to, exclude, key)

    async def publish_ephemeral(
        self,
        room: str,
        frame: str,
        to: str | None = None,
        exclude: str | None = None,
        *,
        key: str | None = None,
    ) -> tuple[int, str] | None:
        """Announce a message of an ephemeral topic on the room's channel (a plain PUBLISH:
        no offset, nothing retained; with `key`, one script that checks and remembers it);
        see `Broker.publish_ephemeral`."""
        message = wire.encode_ephemeral(frame, to, exclude)
        if key is None:
            await self._announce(room, message)
            return None
        channel = wire.channel(wire.channel_prefix(self._calls.db), room)
        step = (
            self._calls.script_ephemeral,
            [wire.idempotency_key(room, key)],
            [channel, message, self._idempotency_window_ms],
        )
        (answer,) = await self._calls.steps([step], again=[step])
        return (int(answer[0]), answer[1].decode()) if answer else None

    async def seen_key(self, room: str, key: str) -> tuple[int, str] | None:
        """The first publish of `key` in `room` within the window, read from its idempotency
        key (see `Broker.seen_key`)."""
        seen = await self._calls.steps([("GET", wire.idempotency_key(room, key))], again=[])
        if seen[0] is None:
            return None
        offset, _, epoch = seen[0].partition(b" ")
        return int(offset), epoch.decode()

    async def signal(self, signal: Signal) -> None:
        """Announce a signal on the room's channel."""
        await self._announce(signal.room, wire.encode_signal(signal))

    async def _announce(self, room: str, payload: bytes) -> None:
        """PUBLISH (`SPUBLISH` on a Redis Cluster) a message without offset on the room's
        channel."""
        channel = wire.channel(wire.channel_prefix(self._calls.db), room)
        await self._calls.call(lambda: self._calls.announce(channel, payload))

    async def history(
        self, room: str, since: int | None = None, limit: int | None = None
    ) -> HistoryPage:
        """Retained messages after `since`, read from the room's stream."""
        page, _ = await self._read(room, since, limit, [])
        return page

    async def read_join(
        self,
        room: str,
        since: int | None = None,
        limit: int | None = None,
        *,
        members: bool = True,
        signals: Sequence[Signal] = (),
    ) -> tuple[HistoryPage, list[str]]:
        """Announce `signals`, read the history and the members, in one HISTORY script
        call (the room's slot: its channel too); see `Broker.read_join`."""
        channel = wire.channel(wire.channel_prefix(self._calls.db), room)
        extra = [channel, "1" if members else "0", *map(wire.encode_signal, signals)]
        return await self._read(room, since, limit, extra)

    async def _read(
        self, room: str, since: int | None, limit: int | None, extra: list[str | bytes]
    ) -> tuple[HistoryPage, list[str]]:
        """One HISTORY script call: the page after `since`, and the members it listed."""
        script = self._calls.script_history
        size, ttl_ms = self._retention(room)
        args: list[str | bytes | int] = [
            wire.new_epoch(),
            ttl_ms,
            1 if since is None else since + 1,
            -1 if limit is None else limit,
            size,
            *extra,
        ]
        keys = self._room_keys(room)
        step = (script, keys, args)
        (result,) = await self._calls.steps([step], again=[step])
        epoch, offset, first_id, entries = (
            result[0].decode(),
            int(result[1]),
            result[2],
            result[3],
        )
        first = wire.stream_offset(first_id) if first_id else offset + 1
        after = since if since is not None else first - 1
        publications = [
            wire.stream_publication(room, entry_id, fields, epoch) for entry_id, fields in entries
        ]
        page = HistoryPage(epoch, offset, publications, after >= first - 1)
        return page, sorted(name.decode() for name in result[4])

    # the webhook outbox (WebhookOutbox, see outbox.py)

    outbox_shards = OUTBOX_SHARDS
    """Shards of the webhook outbox, the same on every node."""

    def shard_of(self, room: str) -> int:
        """The outbox shard of `room`'s events."""
        return self._outbox.shard_of(room)

    async def append_events(
        self, entries: list[OutboxEntry], max_pending: int, *, sending: int = 0
    ) -> tuple[list[int], int]:
        """Keep events in their shards' streams; see `WebhookOutbox`."""
        return await self._outbox.append_events(entries, max_pending, sending=sending)

    async def claim_shard(self, shard: int, token: str, ttl: float) -> bool:
        """Take or renew a shard's lease; see `WebhookOutbox`."""
        return await self._outbox.claim_shard(shard, token, ttl)

    async def release_shard(self, shard: int, token: str) -> None:
        """Give a shard's lease back; see `WebhookOutbox`."""
        await self._outbox.release_shard(shard, token)

    async def read_events(self, shard: int, count: int) -> list[tuple[str, bytes]]:
        """A shard's oldest entries; see `WebhookOutbox`."""
        return await self._outbox.read_events(shard, count)

    async def ack_events(self, shard: int, ids: list[str]) -> None:
        """Delete delivered entries; see `WebhookOutbox`."""
        await self._outbox.ack_events(shard, ids)

    # presence

    async def add_member(
        self,
        room: str,
        username: str,
        connection_id: str,
        *,
        replace: bool = False,
        share: bool = False,
        max_members: int | None = None,
    ) -> str | None:
        """Add to the room's presence (atomically unique, and within `max_members`); see
        `Broker.add_member`."""
        return await self._presence.add_member(
            room, username, connection_id, replace=replace, share=share, max_members=max_members
        )

    async def remove_member(
        self, room: str, username: str, connection_id: str, *, signal: Signal | None = None
    ) -> bool:
        """Compare-and-delete this connection's presence entry (announcing `signal` in the
        same script when the username left)."""
        return await self._presence.remove_member(room, username, connection_id, signal=signal)

    async def has_member(self, room: str, username: str) -> bool:
        """Whether the room's presence holds `username` (any node)."""
        return await self._presence.has_member(room, username)

    async def members(self, room: str) -> list[str]:
        """Sorted usernames of the room, cluster-wide."""
        return await self._presence.members(room)

    async def rooms(self) -> dict[str, list[str]]:
        """Every room with members, cluster-wide."""
        return await self._presence.rooms()

    # subscriptions

    async def subscribe(self, room: str) -> None:
        """Subscribe to the room's channel and wait for Redis to confirm it."""
        if not self._calls.available:
            raise unavailable()
        await self._subscriber.subscribe(room)
        if not self._classes.resolve(room).tracked:
            self._unlisted.add(room)
            # Held before its history is first read: an epoch it creates gets no early TTL.
            await self._calls.call(lambda: self._hold([room]))

    async def unsubscribe(self, room: str) -> None:
        """Stop receiving the room's channel."""
        self._unlisted.discard(room)
        await self._subscriber.unsubscribe(room)

    async def _hold_loop(self) -> None:
        """Hold the rooms without presence that this node serves, every lease tick."""
        while True:
            await asyncio.sleep(self._presence.tick)
            if not self._unlisted or not self._calls.available:
                continue
            try:
                await self._calls.run(lambda: self._hold(list(self._unlisted)))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log_event("broker.hold_failed", level=30, node_id=self.node_id, error=repr(exc))

    async def _hold(self, rooms: list[str]) -> None:
        """Hold `rooms` (of classes without presence, served by this node) for three lease
        ticks: their hold key stands for a presence hash in the scripts (a publish then
        leaves the offset and epoch alone, as for a room with members), and their offset
        and epoch get at least that long. Once no node serves a room, the hold key expires
        and its offset and epoch follow within the room's `history_ttl` (PEXPIRE leaves a
        missing key missing).
        """
        floor = math.ceil(self._presence.tick * 3000)
        async with self._calls.redis.pipeline(transaction=False) as pipe:
            for room in rooms:
                offset, epoch, _, hold = wire.room_keys(room, listed=False)
                pipe.set(hold, b"1", px=floor)
                ttl = max(self._ttl_ms(room), floor)
                pipe.pexpire(offset, ttl)
                pipe.pexpire(epoch, ttl)
            await pipe.execute()


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


async def _bounded(step: Coroutine[Any, Any, None], what: str) -> None:
    """Run one step of `close` for at most `CLOSE_TIMEOUT` seconds; its failure is logged."""
    task = asyncio.get_running_loop().create_task(step)
    done, _ = await asyncio.wait((task,), timeout=CLOSE_TIMEOUT)
    if not done:
        task.cancel()
        log_event("broker.close_timeout", level=30, step=what, seconds=CLOSE_TIMEOUT)
    elif (
        not task.cancelled()
        and (exc := task.exception()) is not None
        and not isinstance(exc, BrokerUnavailable | RedisError | OSError)
    ):
        log_event("broker.close_failed", level=30, step=what, error=repr(exc))
