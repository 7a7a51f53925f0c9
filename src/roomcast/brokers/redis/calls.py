"""The Redis broker's command connections: the pool, its bound and the scripts.

Every command of a node (publishes, presence, history, leases) goes out on a small pool of
connections; the subscription has a connection of its own (subscriber.py). A call that cannot
reach Redis raises `BrokerUnavailable`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ...errors import BrokerUnavailable, ConfigError
from ..urls import SENTINEL_SCHEMES
from . import scripts

__all__ = ["FAULTS", "POOL_SIZE", "Calls", "unavailable"]

T = TypeVar("T")

POOL_SIZE = 64
"""Redis calls of one node under way at once; more wait their turn (pub/sub has its own)."""
CONNECT_TIMEOUT = 2.0
"""Seconds to open a connection to Redis."""
REPLY_TIMEOUT = 5.0
"""Seconds to wait for Redis to answer a command."""
FAULTS = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)
"""What a call raises when Redis cannot be reached or stops answering."""


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
        url: the broker URL.
        available: whether calls may go out before the subscription first connects (a
            publisher without a subscription is always "available" and learns per call).
    """

    def __init__(self, url: str, *, available: bool) -> None:
        # Calls wait for one of POOL_SIZE slots (`run`), so a burst (10,000 clients leaving
        # at once) queues instead of failing with "Too many connections"; the pool itself
        # has room for the few paths that do not go through `run`.
        self.pool = pool_from_url(url, max_connections=POOL_SIZE * 4, health_check_interval=0)
        self.db = self.pool.connection_kwargs.get("db", 0)
        self.redis = Redis(connection_pool=self.pool)
        self.available = available
        """Whether Redis is reachable and this node's subscriptions are live."""
        self._slots = asyncio.Semaphore(POOL_SIZE)
        register = self.redis.register_script
        self.script_publish = register(scripts.PUBLISH)
        self.script_history = register(scripts.HISTORY)
        self.script_add = register(scripts.ADD_MEMBER)
        self.script_remove = register(scripts.REMOVE_MEMBER)
        self.script_sweep = register(scripts.SWEEP_NODE)
        self.script_lease = register(scripts.LEASE)
        self.script_append_events = register(scripts.APPEND_EVENTS)
        self.script_claim_shard = register(scripts.CLAIM_SHARD)
        self.script_release_shard = register(scripts.RELEASE_SHARD)

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

    async def close(self) -> None:
        """Disconnect every connection of the pool."""
        await self.redis.aclose()
        await self.pool.disconnect()
