"""The Redis broker's command connections: the pool, its bound and the scripts.

Every command of a node (publishes, presence, history, leases) goes out on a small pool of
connections; the subscription has a connection of its own (subscriber.py). A call that cannot
reach Redis raises `BrokerUnavailable`.

On a Redis Cluster (`redis+cluster://`), `redis` is redis-py's asyncio `RedisCluster`: it
routes each command by its keys' slot and follows `MOVED`/`ASK`; it does not retry a command
whose connection failed (a publish must not run twice), but reloads the slot map before the
next one. The parts that need more than its public commands are in redispy.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio import ConnectionPool, Redis, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ...errors import BrokerUnavailable, ConfigError
from ..urls import SENTINEL_SCHEMES
from . import redispy, scripts
from .cluster import CLUSTER_SCHEMES, cluster_client

__all__ = ["FAULTS", "POOL_SIZE", "Calls", "unavailable"]

T = TypeVar("T")
Step = tuple[Any, ...]
"""One step of `Calls.steps`: a command `(name, *args)`, or `(script, keys, args)`."""

POOL_SIZE = 64
"""Redis calls of one node under way at once; more wait their turn (pub/sub has its own)."""
CONNECT_TIMEOUT = 2.0
"""Seconds to open a connection to Redis."""
REPLY_TIMEOUT = 5.0
"""Seconds to wait for Redis to answer a command."""
FAULTS = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    asyncio.TimeoutError,
    *redispy.CLUSTER_FAULTS,
)
"""What a call raises when Redis cannot be reached or stops answering (on a Redis Cluster,
also: the slot's shard is down, or the slot is not served)."""


def unavailable(detail: object = None) -> BrokerUnavailable:
    """The error of a call that could not reach Redis."""
    suffix = "" if detail is None else f": {detail}"
    return BrokerUnavailable(f"the broker (redis) is unavailable{suffix}")


def pool_from_url(url: str, **options: object) -> ConnectionPool:
    """A connection pool for `url` (`redis+sentinel://`: to the master the Sentinels name);
    a malformed URL is a `ConfigError`."""
    settings: dict[str, object] = {
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": REPLY_TIMEOUT,
        # No retry: a publish resent after a lost reply would be published twice.
        "retry": Retry(NoBackoff(), 0),
        **options,
    }
    if url.startswith(SENTINEL_SCHEMES):
        from .sentinel import sentinel_pool

        return sentinel_pool(url, **settings)
    try:
        return ConnectionPool.from_url(url, **settings)
    except ValueError as exc:
        raise ConfigError(f"invalid broker URL: {exc}") from None


class Calls:
    """The command side of one node: a bounded pool, a client, the registered scripts.

    Args:
        url: the broker URL (`redis://`, `rediss://` or `redis+cluster://`).
        available: whether calls may go out before the subscription first connects (a
            publisher without a subscription is always "available" and learns per call).
    """

    def __init__(self, url: str, *, available: bool) -> None:
        self.cluster = url.startswith(CLUSTER_SCHEMES)
        """Whether the broker is a Redis Cluster (keys routed by slot, sharded pub/sub)."""
        self.pool: ConnectionPool | None = None
        self.redis: Redis | RedisCluster
        if self.cluster:
            self.redis = cluster_client(
                url,
                max_connections=POOL_SIZE * 4,
                socket_connect_timeout=CONNECT_TIMEOUT,
                socket_timeout=REPLY_TIMEOUT,
            )
            self.db = 0
        else:
            # Calls wait for one of POOL_SIZE slots (`run`), so a burst (10,000 clients
            # leaving at once) queues instead of failing with "Too many connections"; the
            # pool itself has room for the few paths that do not go through `run`.
            self.pool = pool_from_url(url, max_connections=POOL_SIZE * 4, health_check_interval=0)
            self.db = self.pool.connection_kwargs.get("db", 0)
            self.redis = Redis(connection_pool=self.pool)
        self.available = available
        """Whether Redis is reachable and this node's subscriptions are live (on a Redis
        Cluster: those of at least one shard; a room whose shard is down fails per call)."""
        self._slots = asyncio.Semaphore(POOL_SIZE)
        self._queue: list[tuple[list[Step], asyncio.Future[list[Any]]]] = []
        """Steps of `steps` calls waiting for this loop iteration's pipeline."""
        self._flushes: set[asyncio.Task[None]] = set()
        register = self.redis.register_script
        self.publish_source = scripts.sharded(scripts.PUBLISH) if self.cluster else scripts.PUBLISH
        """The PUBLISH script as this broker runs it (`SPUBLISH` on a Redis Cluster)."""
        self.script_publish = register(self.publish_source)
        self.publish_batch_source = (
            scripts.sharded(scripts.PUBLISH_BATCH) if self.cluster else scripts.PUBLISH_BATCH
        )
        """Several publishes in one script call (PUBLISH_BATCH; on one Redis only: a Cluster's
        batches span slots)."""
        self.script_publish_batch = register(self.publish_batch_source)
        self.script_ephemeral = register(
            scripts.sharded(scripts.EPHEMERAL) if self.cluster else scripts.EPHEMERAL
        )
        self.script_history = register(
            scripts.sharded(scripts.HISTORY) if self.cluster else scripts.HISTORY
        )
        self.script_add = register(scripts.ADD_MEMBER)
        self.script_remove = register(
            scripts.sharded(scripts.REMOVE_MEMBER) if self.cluster else scripts.REMOVE_MEMBER
        )
        self.script_sweep_claim = register(scripts.SWEEP_CLAIM)
        self.script_sweep_rooms = register(
            scripts.sharded(scripts.SWEEP_ROOMS) if self.cluster else scripts.SWEEP_ROOMS
        )
        self.script_sweep_done = register(scripts.SWEEP_DONE)
        self.script_lease = register(scripts.LEASE)
        self.script_append_events = register(scripts.APPEND_EVENTS)
        self.script_claim_shard = register(scripts.CLAIM_SHARD)
        self.script_release_shard = register(scripts.RELEASE_SHARD)
        self._scripts = [value for value in vars(self).values() if isinstance(value, AsyncScript)]

    async def load_scripts(self) -> None:
        """Put every script in Redis' script cache, in one round trip, before the node turns
        available: a Redis that restarted without its cache would otherwise answer the
        first calls of each script `NOSCRIPT`, and a storm of rejoins would run each join's
        steps again on its own. On a Redis Cluster the calls load what they need where they
        run (a shard's scripts are its own, and `NOSCRIPT` is answered per shard).

        Raises:
            BrokerUnavailable: Redis is unreachable.
        """
        if self.cluster:
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for script in self._scripts:
                    pipe.script_load(script.script)
                await pipe.execute()
        except FAULTS as exc:
            raise unavailable(exc) from None

    def slot(self, key: str) -> int:
        """The hash slot of `key` on a Redis Cluster (0 on one Redis: every key together)."""
        return redispy.key_slot(key) if self.cluster else 0

    def server_of(self, key: str) -> object:
        """Which server holds `key`: its master's address on a Redis Cluster (its slot when
        the map does not say), the same for every key on one Redis."""
        # `self.cluster`, not isinstance: redis-py's client classes are Protocols, whose
        # isinstance check costs a call in typing per publish.
        if not self.cluster:
            return 0
        assert isinstance(self.redis, RedisCluster)
        return redispy.master_for(self.redis, key) or redispy.key_slot(key)

    def replicas(self, key: str) -> int:
        """How many replicas the slot map lists for `key`'s shard (0 on one Redis)."""
        if not self.cluster:
            return 0
        assert isinstance(self.redis, RedisCluster)
        return redispy.replica_count(self.redis, key)

    async def announce(self, channel: bytes, payload: bytes) -> None:
        """Send `payload` on a room channel: `PUBLISH`, or `SPUBLISH` on a Redis Cluster
        (routed to the room's shard by the channel's hash tag)."""
        if isinstance(self.redis, RedisCluster):
            await self.redis.spublish(channel, payload)
        else:
            await self.redis.publish(channel, payload)

    async def connection(
        self, key: str
    ) -> tuple[AbstractConnection, Callable[[], Awaitable[None]]]:
        """A connected connection to the server that holds `key`, and how to give it back
        (publishing.py pipelines on it by hand).

        Raises:
            BrokerUnavailable: no connection could be had (nothing was sent).
        """
        try:
            if isinstance(self.redis, RedisCluster):
                return await redispy.node_connection(self.redis, key)
            pool = self.pool
            assert pool is not None
            conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        except FAULTS as exc:
            raise unavailable(exc) from None

        async def release() -> None:
            await pool.release(conn)

        return conn, release

    async def call(self, what: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis call for a client of the node; refused at once while unavailable.

        Raises:
            BrokerUnavailable: Redis is unreachable (or this node's subscription is down).
        """
        if not self.available:
            raise unavailable()
        return await self.run(what)

    async def run(self, what: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis call in its turn (the node's own upkeep calls this directly: it
        runs while the node reconnects, before it turns available).

        Raises:
            BrokerUnavailable: Redis is unreachable.
        """
        try:
            async with self._slots:
                return await what()
        except FAULTS as exc:
            raise unavailable(exc) from None

    async def steps(
        self, steps: list[Step], *, again: list[Step], upkeep: bool = False
    ) -> list[Any]:
        """Run `steps` one after the other (see `_in_order`) for a client of the node, as
        `call` runs a call (refused at once while unavailable), or, with `upkeep`, as `run`
        does. On one Redis the call holds no slot of the pool while it waits: the pipeline
        it joins takes one for the whole batch, so a storm of joins is not held to
        `POOL_SIZE` joins at a time.

        Raises:
            BrokerUnavailable: Redis is unreachable (or, unless `upkeep`, this node's
                subscription is down).
        """
        if not upkeep and not self.available:
            raise unavailable()
        if isinstance(self.redis, RedisCluster):
            return await self.run(lambda: self._in_order(steps, again=again))
        try:
            return await self._in_order(steps, again=again)
        except FAULTS as exc:
            raise unavailable(exc) from None

    async def _in_order(self, steps: list[Step], *, again: list[Step]) -> list[Any]:
        """Run `steps` one after the other (a Redis command `(name, *args)`, or a script
        `(script, keys, args)`) and return their answers; each step runs only once the one
        before it did. On one Redis they share one round trip with the steps of every other
        call made in the same loop iteration (one pipeline: it runs in order and stops where
        its connection fails; a storm of joins is then a few round trips, not one per join);
        on a Redis Cluster they touch several slots, so each waits for the one before it.

        When Redis answers `NOSCRIPT` (it restarted without its script cache), the script
        did not run but the steps after it did: the scripts are loaded and `again` (the
        steps that put things right, then the rest) is run in their place.
        """
        if isinstance(self.redis, RedisCluster):
            return [await self._step(self.redis, step) for step in steps]
        answers = await self._batched(steps)
        if not any(isinstance(answer, NoScriptError) for answer in answers):
            for answer in answers:
                if isinstance(answer, Exception):
                    raise answer
            return answers
        async with self._slots:  # each caller on its own: a slot each, as for `run`
            return [await self._step(self.redis, step) for step in again]

    async def _batched(self, steps: list[Step]) -> list[Any]:
        """The answers to `steps`, sent in the pipeline of this loop iteration's calls."""
        waiter: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._queue.append((steps, waiter))
        if len(self._queue) == 1:
            flush = asyncio.get_running_loop().create_task(self._flush())
            self._flushes.add(flush)
            flush.add_done_callback(self._flushes.discard)
        return await waiter

    async def _flush(self) -> None:
        """Send the steps queued in this loop iteration in one pipeline; each caller gets
        its own answers (an answer may be the error Redis gave that step)."""
        batch: list[tuple[list[Step], asyncio.Future[list[Any]]]] = []
        try:
            await asyncio.sleep(0)  # let the calls of this loop iteration join the batch
            batch, self._queue = self._queue, []
            async with self._slots, self.redis.pipeline(transaction=False) as pipe:
                for steps, _ in batch:
                    for step in steps:
                        if isinstance(step[0], str):
                            pipe.execute_command(*step)
                        else:
                            script, keys, args = step
                            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
                answers: list[Any] = await pipe.execute(raise_on_error=False)
        except BaseException as exc:
            if not batch:
                batch, self._queue = self._queue, []
            for _, waiter in batch:
                if waiter.done():
                    continue
                if isinstance(exc, asyncio.CancelledError):
                    waiter.cancel()
                else:
                    waiter.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        start = 0
        for steps, waiter in batch:
            if not waiter.done():
                waiter.set_result(answers[start : start + len(steps)])
            start += len(steps)

    @staticmethod
    async def _step(redis: Redis | RedisCluster, step: Step) -> Any:
        if isinstance(step[0], str):
            return await redis.execute_command(*step)
        script, keys, args = step
        return await script(keys=keys, args=args)

    async def close(self) -> None:
        """Disconnect every connection of the pool."""
        await self.redis.aclose()
        if self.pool is not None:
            await self.pool.disconnect()
