"""The Redis broker: cross-node delivery, cluster-wide presence and history in one Redis.

See docs/architecture.md ("Cluster") for the keys, channels, message format and faults.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import BrokerUnavailable, ConfigError
from ..log import log_event
from . import redis_scripts
from .base import BrokerListener, DuplicateMember, HistoryPage, Publication, Signal

__all__ = ["RedisBroker"]

T = TypeVar("T")

KEY_PREFIX = "rc:"
POOL_SIZE = 64
"""Redis calls of one node under way at once; more wait their turn (pub/sub has its own)."""
CLOSE_TIMEOUT = 2.0
"""Seconds each step of `close` may take: leaving presence, then disconnecting."""
SUBSCRIBE_TIMEOUT = 5.0
PING_TIMEOUT = 1.0
DELIVERY_WAIT = 2.0
"""Seconds `publish` waits for its own message to reach this node's members (then returns)."""
_FAULTS = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisBroker:
    """Delivery, presence and history shared by every node through one Redis.

    Args:
        url: `redis://[:PASSWORD@]HOST:PORT/DB` (or `rediss://` for TLS).
        history_size: messages retained per room (a stream trimmed to exactly this many).
        history_ttl: seconds a room's retained messages live after its last publish; a room
            nobody is in loses its offset and epoch (its history) once nothing was published
            and nobody was present for as long.
        presence_ttl: bound, in seconds, on how long a dead node's members stay in presence.
        presence: hold a node lease, keep presence and sweep dead nodes; False for a
            publisher that holds no connections (it then needs no subscription either).
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
    ) -> None:
        self.url = url
        self.history_size = history_size
        self.history_ttl_ms = max(1, math.ceil(history_ttl * 1000))
        self.presence_ttl = presence_ttl
        # A lease of 2/3 of the bound, renewed and swept every 1/6: a dead node's members
        # are removed at most ~5/6 of `presence_ttl` after its last renewal.
        self.lease_ms = max(500, int(presence_ttl * 1000 * 2 / 3))
        self.tick = presence_ttl / 6
        self.presence = presence
        try:
            # Calls wait for one of POOL_SIZE slots (`_call`), so a burst (10,000 clients
            # leaving at once) queues instead of failing with "Too many connections"; the
            # pool itself has room for the few paths that do not go through `_call`.
            self._pool: ConnectionPool = ConnectionPool.from_url(
                url,
                max_connections=POOL_SIZE * 4,
                socket_connect_timeout=2,
                socket_timeout=5,
                # No retry: a publish resent after a lost reply would be published twice.
                # Stale pooled connections are replaced when taken from the pool instead.
                retry=Retry(NoBackoff(), 0),
                health_check_interval=0,
            )
            self._sub_pool: ConnectionPool = ConnectionPool.from_url(
                url,
                protocol=2,
                socket_connect_timeout=2,
                socket_timeout=5,  # the handshake; reads of messages wait without limit
                retry=Retry(NoBackoff(), 0),
            )
        except ValueError as exc:
            raise ConfigError(f"invalid broker URL: {exc}") from None
        db = self._pool.connection_kwargs.get("db", 0)
        self._channel_prefix = f"{KEY_PREFIX}{db}:"
        self._redis = Redis(connection_pool=self._pool)
        self._slots = asyncio.Semaphore(POOL_SIZE)
        self._publish = self._redis.register_script(redis_scripts.PUBLISH)
        self._history = self._redis.register_script(redis_scripts.HISTORY)
        self._add = self._redis.register_script(redis_scripts.ADD_MEMBER)
        self._remove = self._redis.register_script(redis_scripts.REMOVE_MEMBER)
        self._sweep = self._redis.register_script(redis_scripts.SWEEP_NODE)
        self._lease = self._redis.register_script(redis_scripts.LEASE)
        self.node_id = ""
        self._listener: BrokerListener | None = None
        self._token = secrets.token_hex(8)
        self._rooms: dict[str, bytes] = {}
        """Rooms this node wants to receive, with their channel."""
        self._channels: dict[bytes, str] = {}
        self._pending: dict[bytes, list[asyncio.Future[None]]] = {}
        self._members: dict[tuple[str, str], str] = {}
        """This node's presence entries: (room, username) -> connection id."""
        self._orphans: set[tuple[str, str, str]] = set()
        """Entries of members gone while Redis was unreachable, to remove when it is back."""
        self._seen: dict[str, int] = {}
        self._waiters: dict[str, list[tuple[int, asyncio.Future[None]]]] = {}
        self._conn: AbstractConnection | None = None
        self._send_lock = asyncio.Lock()
        self._available = not presence
        self._ready = asyncio.Event()
        self._connected_at = 0.0
        self._last_read = 0.0
        self._cleaned = False
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._flushing = False
        self._flushes: set[asyncio.Task[None]] = set()

    # lifecycle

    @property
    def available(self) -> bool:
        """Whether Redis is reachable and this node's subscriptions are live."""
        return self._available

    async def start(self, node_id: str, listener: BrokerListener) -> None:
        """Connect; with presence, wait (a few seconds at most) for the first connection."""
        self.node_id = node_id
        self._listener = listener
        if not self.presence:
            return
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._reader_loop(), name="roomcast-redis-reader"),
            loop.create_task(self._lease_loop(), name="roomcast-redis-lease"),
        ]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self._ready.wait()

    async def close(self) -> None:
        """Remove this node's presence entries and lease, then disconnect."""
        self._closing = True
        tasks, self._tasks = list(self._tasks), []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.presence and self.node_id and self._available:
            with contextlib.suppress(*_FAULTS, RedisError, TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await self._sweep(
                        keys=self._node_keys(self.node_id),
                        args=[self.node_id, KEY_PREFIX, "1", self.history_ttl_ms],
                    )
                    await self._redis.delete(self._key_lease(self.node_id))
                    await self._redis.srem(self._key_nodes(), self.node_id)
        self._members.clear()
        self._drop_connection()
        self._release_waiters()
        # Bounded: a socket whose peer never finishes the close must not hold up a shutdown.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._redis.aclose()
                await self._pool.disconnect()
                await self._sub_pool.disconnect()

    # keys and channels

    @staticmethod
    def _key(room: str, kind: str) -> str:
        return f"{KEY_PREFIX}{{{room}}}:{kind}"

    def _room_keys(self, room: str) -> list[str]:
        return [
            self._key(room, "o"),
            self._key(room, "e"),
            self._key(room, "s"),
            self._key(room, "p"),
        ]

    @staticmethod
    def _key_lease(node_id: str) -> str:
        return f"{KEY_PREFIX}node:{node_id}"

    @staticmethod
    def _key_nodes() -> str:
        return f"{KEY_PREFIX}nodes"

    @staticmethod
    def _key_rooms() -> str:
        return f"{KEY_PREFIX}rooms"

    def _node_keys(self, node_id: str) -> list[str]:
        return [
            self._key_lease(node_id),
            f"{KEY_PREFIX}node-members:{node_id}",
            self._key_nodes(),
            self._key_rooms(),
        ]

    def _channel(self, room: str) -> bytes:
        return f"{self._channel_prefix}{{{room}}}".encode()

    # commands

    async def _call(self, what: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis call; connection faults become `BrokerUnavailable`."""
        if not self._available:
            raise BrokerUnavailable("the broker (redis) is unavailable")
        try:
            async with self._slots:
                return await what()
        except _FAULTS as exc:
            raise BrokerUnavailable(f"the broker (redis) is unavailable: {exc}") from None

    async def ping(self) -> None:
        """Check that Redis answers (within a second) and this node's subscriptions are live."""

        async def ping() -> None:
            async with asyncio.timeout(PING_TIMEOUT):
                await self._redis.ping()

        await self._call(ping)

    async def publish(self, room: str, prefix: str, to: str | None = None) -> Publication:
        """Assign the next offset, retain and announce, in one script; see `Broker.publish`.

        When this node serves the room, it returns once the message reached the local
        members (so a sender's `ack` follows its own message), or after `DELIVERY_WAIT`.
        """
        if not self._available:
            raise BrokerUnavailable("the broker (redis) is unavailable")
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._batch.append(
            (
                (
                    *self._room_keys(room),
                    prefix,
                    to or "",
                    self.history_size,
                    self.history_ttl_ms,
                    self._channel(room),
                    secrets.token_hex(6),
                ),
                waiter,
            )
        )
        if not self._flushing:
            self._flushing = True
            self._spawn(self._flush_publishes())
        result = await waiter
        offset, epoch = int(result[0]), result[1].decode()
        if room in self._rooms and self._seen.get(room, 0) < offset:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(room, []).append((offset, waiter))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DELIVERY_WAIT):
                    await waiter
        return Publication(room, offset, f"{prefix}{offset}}}", to, epoch)

    async def _flush_publishes(self) -> None:
        """Send the publishes queued meanwhile in one pipeline: one round trip, not one each.

        One flush at a time: what is asked for while a batch is on its way goes in the next
        batch, sent once this one is answered, so batches reach Redis in order. Scripts run
        one by one in Redis; the order of the batches and within each is the order in which
        the publishes were asked for (so one sender's offsets follow its calls).
        """
        try:
            await asyncio.sleep(0)  # let the publishes of this loop iteration join the batch
            while self._batch:
                batch, self._batch = self._batch, []
                await self._send_publishes(batch)
        except BaseException as exc:
            batch, self._batch = self._batch, []
            for _, waiter in batch:
                if not waiter.done():
                    waiter.set_exception(
                        BrokerUnavailable(f"the broker (redis) is unavailable: {exc!r}")
                    )
            raise
        finally:
            self._flushing = False

    async def _send_publishes(
        self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]
    ) -> None:
        try:
            results = await self._run_publishes([args for args, _ in batch])
        except _FAULTS as exc:
            error = BrokerUnavailable(f"the broker (redis) is unavailable: {exc}")
            for _, waiter in batch:
                if not waiter.done():
                    waiter.set_exception(error)
            return
        except BaseException as exc:
            for _, waiter in batch:
                if not waiter.done():
                    waiter.set_exception(exc)
            raise
        for (_, waiter), result in zip(batch, results, strict=True):
            if waiter.done():
                continue
            if isinstance(result, BaseException):
                waiter.set_exception(result)
            else:
                waiter.set_result(result)

    async def _run_publishes(self, calls: list[tuple[Any, ...]]) -> list[Any]:
        sha = self._publish.sha
        for attempt in (1, 2):
            async with self._redis.pipeline(transaction=False) as pipe:
                for args in calls:
                    pipe.evalsha(sha, 4, *args)
                results: list[Any] = await pipe.execute(raise_on_error=False)
            if attempt == 1 and any(isinstance(r, NoScriptError) for r in results):
                # Redis restarted without its script cache. A script that was refused did not
                # run, so those calls are sent again once it is loaded.
                sha = self._publish.sha = await self._redis.script_load(redis_scripts.PUBLISH)
                retry = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
                again = await self._run_publishes([calls[i] for i in retry])
                for i, result in zip(retry, again, strict=True):
                    results[i] = result
            return results
        raise AssertionError("unreachable")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def signal(self, signal: Signal) -> None:
        """Announce a signal on the room's channel."""
        payload = b"s" + orjson.dumps(
            [signal.kind, signal.username, signal.connection_id, signal.node_id, signal.reason]
        )
        await self._call(lambda: self._redis.publish(self._channel(signal.room), payload))

    async def history(
        self, room: str, since: int | None = None, limit: int | None = None
    ) -> HistoryPage:
        """Retained messages after `since`, read from the room's stream."""
        start = "-" if since is None else f"{since + 1}-0"
        result = await self._call(
            lambda: self._history(
                keys=self._room_keys(room),
                args=[
                    secrets.token_hex(6),
                    self.history_ttl_ms,
                    start,
                    -1 if limit is None else limit,
                ],
            )
        )
        epoch, offset, first_id, entries = (
            result[0].decode(),
            int(result[1]),
            result[2],
            result[3],
        )
        first = int(first_id.split(b"-", 1)[0]) if first_id else offset + 1
        after = since if since is not None else first - 1
        publications = []
        for entry_id, fields in entries:
            values = dict(zip(fields[::2], fields[1::2], strict=True))
            to = values.get(b"t", b"").decode() or None
            publications.append(
                Publication(room, int(entry_id.split(b"-", 1)[0]), values[b"f"].decode(), to, epoch)
            )
        return HistoryPage(epoch, offset, publications, after >= first - 1)

    # presence

    def _entry(self, room: str, username: str, connection_id: str) -> tuple[str, str]:
        return f"{self.node_id}:{connection_id}", f"{room}\n{username}\n{connection_id}"

    def _presence_keys(self, room: str) -> list[str]:
        return [
            self._key(room, "p"),
            f"{KEY_PREFIX}node-members:{self.node_id}",
            self._key_rooms(),
            self._key(room, "o"),
            self._key(room, "e"),
        ]

    async def add_member(
        self, room: str, username: str, connection_id: str, *, replace: bool = False
    ) -> str | None:
        """Add to the room's presence (atomically unique); see `Broker.add_member`."""
        value, entry = self._entry(room, username, connection_id)
        status, previous = await self._call(
            lambda: self._add(
                keys=self._presence_keys(room),
                args=[username, value, entry, "1" if replace else "0", room],
            )
        )
        if int(status) == 0:
            raise DuplicateMember(username)
        self._members[(room, username)] = connection_id
        if int(status) == 2 or not previous:
            return None
        return str(previous.decode().rpartition(":")[2])

    async def remove_member(self, room: str, username: str, connection_id: str) -> bool:
        """Compare-and-delete this connection's presence entry."""
        if self._members.get((room, username)) == connection_id:
            del self._members[(room, username)]
        value, entry = self._entry(room, username, connection_id)
        try:
            removed = await self._call(
                lambda: self._remove(
                    keys=self._presence_keys(room),
                    args=[username, value, entry, room, self.history_ttl_ms],
                )
            )
        except BrokerUnavailable:
            # The entry must not outlive the connection: removed once Redis is back.
            self._orphans.add((room, username, connection_id))
            raise
        return bool(removed)

    async def has_member(self, room: str, username: str) -> bool:
        """Whether the room's presence holds `username` (any node)."""
        return bool(await self._call(lambda: self._redis.hexists(self._key(room, "p"), username)))

    async def members(self, room: str) -> list[str]:
        """Sorted usernames of the room, cluster-wide."""
        names = await self._call(lambda: self._redis.hkeys(self._key(room, "p")))
        return sorted(_text(n) for n in names)

    async def rooms(self) -> dict[str, list[str]]:
        """Every room with members, cluster-wide."""

        async def read() -> dict[str, list[str]]:
            rooms = sorted(_text(r) for r in await self._redis.smembers(self._key_rooms()))
            async with self._redis.pipeline(transaction=False) as pipe:
                for room in rooms:
                    pipe.hkeys(self._key(room, "p"))
                listing = await pipe.execute()
            return {
                room: sorted(_text(n) for n in names)
                for room, names in zip(rooms, listing, strict=True)
                if names
            }

        return await self._call(read)

    # subscriptions

    async def subscribe(self, room: str) -> None:
        """Subscribe to the room's channel and wait for Redis to confirm it."""
        if not self._available or self._conn is None:
            raise BrokerUnavailable("the broker (redis) is unavailable")
        channel = self._channel(room)
        self._rooms[room] = channel
        self._channels[channel] = room
        waiter = asyncio.get_running_loop().create_future()
        self._pending.setdefault(channel, []).append(waiter)
        try:
            await self._send("SUBSCRIBE", channel)
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT):
                await waiter
        except (*_FAULTS, RedisError, BrokerUnavailable) as exc:
            self._rooms.pop(room, None)
            raise BrokerUnavailable(f"cannot subscribe to room {room!r}: {exc}") from None

    async def unsubscribe(self, room: str) -> None:
        """Stop receiving the room's channel."""
        channel = self._rooms.pop(room, None)
        self._seen.pop(room, None)
        for _, waiter in self._waiters.pop(room, ()):
            if not waiter.done():
                waiter.set_result(None)
        if channel is None:
            return
        with contextlib.suppress(*_FAULTS, RedisError, BrokerUnavailable):
            await self._send("UNSUBSCRIBE", channel)

    async def _send(self, *args: Any) -> None:
        # One lock, taken in call order: SUBSCRIBE/UNSUBSCRIBE reach Redis in the order the
        # node asked for them.
        async with self._send_lock:
            conn = self._conn
            if conn is None:
                raise BrokerUnavailable("the broker (redis) is unavailable")
            await conn.send_command(*args, check_health=False)

    # the subscription connection

    async def _reader_loop(self) -> None:
        """Keep one subscription connection: connect, resubscribe, read; on loss, retry."""
        attempt = 0
        while not self._closing:
            try:
                await self._connect()
                attempt = 0
                await self._read()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._lost(exc)
            attempt += 1
            delay = min(5.0, 0.1 * 2 ** min(attempt, 6))
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    async def _connect(self) -> None:
        conn = self._sub_pool.make_connection()  # type: ignore[no-untyped-call]
        await conn.connect()
        self._conn = conn
        self._last_read = time.monotonic()
        heartbeat = asyncio.get_running_loop().create_task(self._heartbeat(conn))
        self._tasks.append(heartbeat)
        heartbeat.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)
        # Resubscribe every room this node serves before declaring the broker available.
        rooms = list(self._rooms.items())
        if rooms:
            await self._send("SUBSCRIBE", *[c for _, c in rooms])
            waiting = {c for _, c in rooms}
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT):
                while waiting:
                    response = await conn.read_response(timeout=math.inf, disable_decoding=True)
                    if response[0] == b"subscribe":
                        waiting.discard(response[1])
                    self._handle(response)
        if not self._cleaned:
            await self._clean_own_entries()
            self._cleaned = True
        await self._renew()
        await self._remove_orphans()
        self._connected_at = time.monotonic()
        self._available = True
        self._ready.set()
        log_event("broker.connected", node_id=self.node_id, rooms=len(rooms))
        if self._listener is not None:
            self._listener.on_broker_state(True)

    async def _read(self) -> None:
        conn = self._conn
        assert conn is not None
        while True:
            response = await conn.read_response(timeout=math.inf, disable_decoding=True)
            self._last_read = time.monotonic()
            self._handle(response)

    async def _heartbeat(self, conn: AbstractConnection) -> None:
        """PING the subscription connection when it is quiet; drop it when Redis is silent."""
        interval = min(5.0, max(0.5, self.presence_ttl / 6))
        while self._conn is conn:
            await asyncio.sleep(interval)
            quiet = time.monotonic() - self._last_read
            if quiet > 3 * interval:
                log_event("broker.silent", level=30, node_id=self.node_id, seconds=round(quiet))
                await conn.disconnect(nowait=True)
                return
            if quiet > interval:
                with contextlib.suppress(*_FAULTS, RedisError, BrokerUnavailable):
                    await self._send("PING")

    def _lost(self, exc: BaseException) -> None:
        was = self._available
        self._drop_connection()
        self._release_waiters()
        if was:
            log_event("broker.lost", level=40, node_id=self.node_id, error=repr(exc))
            if self._listener is not None:
                self._listener.on_broker_state(False)
        else:
            log_event("broker.connect_failed", level=30, node_id=self.node_id, error=repr(exc))

    def _drop_connection(self) -> None:
        self._available = False
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn._close()  # type: ignore[no-untyped-call]
        for waiters in self._pending.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(BrokerUnavailable("subscription connection lost"))
                    waiter.exception()
        self._pending.clear()
        self._seen.clear()

    def _release_waiters(self) -> None:
        for waiters in self._waiters.values():
            for _, waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        self._waiters.clear()

    def _handle(self, response: Any) -> None:
        kind = response[0]
        if kind == b"message":
            self._dispatch(response[1], response[2])
        elif kind == b"subscribe":
            for waiter in self._pending.pop(response[1], ()):
                if not waiter.done():
                    waiter.set_result(None)
        elif kind == b"unsubscribe":
            channel = response[1]
            if self._channels.get(channel) not in self._rooms:
                self._channels.pop(channel, None)

    def _dispatch(self, channel: bytes, data: bytes) -> None:
        room = self._channels.get(channel)
        listener = self._listener
        if room is None or room not in self._rooms or listener is None:
            return
        if data[:1] == b"p":
            epoch, offset_b, to, frame = data[1:].decode().split("\n", 3)
            offset = int(offset_b)
            listener.on_publication(Publication(room, offset, frame, to or None, epoch))
            if offset > self._seen.get(room, 0):
                self._seen[room] = offset
            waiters = self._waiters.get(room)
            if waiters:
                keep = []
                for wanted, waiter in waiters:
                    if wanted <= offset:
                        if not waiter.done():
                            waiter.set_result(None)
                    else:
                        keep.append((wanted, waiter))
                self._waiters[room] = keep
        elif data[:1] == b"s":
            kind, username, connection_id, node_id, reason = orjson.loads(data[1:])
            if kind == "leave" and reason == "node_lost" and node_id == self.node_id:
                return  # this node announced them itself, through on_members_lost
            listener.on_signal(Signal(kind, room, username, connection_id, node_id, reason))

    # leases and the sweeper

    async def _renew(self) -> None:
        """Renew this node's lease; when it had lapsed, put this node's members back."""
        held = await self._lease(
            keys=[self._key_lease(self.node_id), self._key_nodes()],
            args=[self.node_id, self._token, self.lease_ms],
        )
        if int(held) == 0 and self._members and self._cleaned:
            await self._readd_members()

    async def _readd_members(self) -> None:
        log_event(
            "presence.lease_lapsed", level=30, node_id=self.node_id, members=len(self._members)
        )
        for (room, username), connection_id in list(self._members.items()):
            value, entry = self._entry(room, username, connection_id)
            status, _ = await self._add(
                keys=self._presence_keys(room), args=[username, value, entry, "0", room]
            )
            if int(status) == 0:
                # Someone took the name while this node was away: the newer one keeps it.
                self._members.pop((room, username), None)
                if self._listener is not None:
                    self._listener.on_signal(
                        Signal("replace", room, username, connection_id, self.node_id)
                    )
            elif int(status) == 1:
                await self._redis.publish(
                    self._channel(room),
                    b"s" + orjson.dumps(["join", username, connection_id, self.node_id, ""]),
                )

    async def _remove_orphans(self) -> None:
        """Remove (and announce) the entries of members that left while Redis was away."""
        for room, username, connection_id in list(self._orphans):
            value, entry = self._entry(room, username, connection_id)
            removed = await self._remove(
                keys=self._presence_keys(room),
                args=[username, value, entry, room, self.history_ttl_ms],
            )
            self._orphans.discard((room, username, connection_id))
            if removed:
                if self._listener is not None:
                    self._listener.on_members_lost(room, [username], self.node_id)
                await self._redis.publish(
                    self._channel(room),
                    b"s"
                    + orjson.dumps(["leave", username, connection_id, self.node_id, "node_lost"]),
                )

    async def _clean_own_entries(self) -> None:
        """A node starting under an id that still has entries removes them first."""
        await self._sweep_node(self.node_id, force=True)

    async def _sweep_node(self, node_id: str, *, force: bool = False) -> None:
        removed = await self._sweep(
            keys=self._node_keys(node_id),
            args=[node_id, KEY_PREFIX, "1" if force else "0", self.history_ttl_ms],
        )
        if not removed:
            return
        by_room: dict[str, list[str]] = {}
        for room_b, username_b in zip(removed[::2], removed[1::2], strict=True):
            by_room.setdefault(room_b.decode(), []).append(username_b.decode())
        log_event(
            "presence.swept", node_id=self.node_id, lost_node=node_id, members=len(removed) // 2
        )
        for room, usernames in by_room.items():
            if self._listener is not None:
                self._listener.on_members_lost(room, usernames, node_id)
            for username in usernames:
                await self._redis.publish(
                    self._channel(room),
                    b"s" + orjson.dumps(["leave", username, "", self.node_id, "node_lost"]),
                )

    async def _lease_loop(self) -> None:
        """Renew the lease and sweep dead nodes every `presence_ttl / 6` seconds."""
        while True:
            await asyncio.sleep(self.tick * random.uniform(0.8, 1.0))
            if not self._available:
                continue
            try:
                await self._renew()
                # Just reconnected: give the other nodes one lease to renew theirs first.
                if time.monotonic() - self._connected_at >= self.lease_ms / 1000:
                    await self._sweep_dead_nodes()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log_event("presence.renew_failed", level=30, node_id=self.node_id, error=repr(exc))

    async def _sweep_dead_nodes(self) -> None:
        nodes = sorted(_text(n) for n in await self._redis.smembers(self._key_nodes()))
        others = [n for n in nodes if n != self.node_id]
        if not others:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for node_id in others:
                pipe.exists(self._key_lease(node_id))
            alive = await pipe.execute()
        for node_id, live in zip(others, alive, strict=True):
            if not live:
                await self._sweep_node(node_id)
