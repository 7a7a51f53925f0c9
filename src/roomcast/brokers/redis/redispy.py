"""Where the Redis broker relies on redis-py's asyncio cluster client past its plain commands.

redis-py (>=8.0,<9) routes commands by slot, follows `MOVED`/`ASK` and offers sharded pub/sub
(`redis.asyncio.cluster.ClusterPubSub`), but its `ClusterPubSub` does not wait for Redis to
confirm an `SSUBSCRIBE` (a join must not miss what is published after it was admitted), so
the broker keeps one hand-managed subscription connection per shard (cluster.py), as it does
on one Redis. For that, and for publishes pipelined on one shard's connection, it needs:

- the slot of a key and the address of the master that serves it (public: `keyslot`,
  `get_node_from_key`, `get_primaries`);
- a connection of that master's own pool (`ClusterNode.acquire_connection` / `release`);
  without them, publishes go one by one through the client (`evalsha`), which is slower and
  just as correct;
- how many replicas a slot has (`NodesManager.slots_cache`), so that publishes wait for one
  (`WAIT`); without it, nothing waits;
- a reload of the slot map after a failover or a `MOVED` (`NodesManager.initialize`, or
  `move_slot` for one redirect); without them, the client is closed, which makes it reload
  the map before its next command.

Every such use is here, each with its fallback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import AbstractConnection
from redis.crc import key_slot as _key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)

__all__ = [
    "CLUSTER_FAULTS",
    "POOLED",
    "REDIRECTS",
    "key_slot",
    "master_for",
    "masters",
    "node_connection",
    "redirected",
    "refresh",
    "replica_count",
]

CLUSTER_FAULTS = (
    ClusterDownError,
    SlotNotCoveredError,
    TryAgainError,
)
"""What a cluster call raises when the slot's shard is down or the slot is not served."""
REDIRECTS = (MovedError, AskError)
"""Answers that say a command went to the wrong shard (it did not run)."""
POOLED = hasattr(ClusterNode, "acquire_connection") and hasattr(ClusterNode, "release")
"""Whether a master's own connections can be taken for a hand-made pipeline."""


def key_slot(key: str | bytes) -> int:
    """The hash slot of `key` (its `{tag}` when it has one)."""
    return int(_key_slot(key.encode() if isinstance(key, str) else key))


def master_for(cluster: RedisCluster, key: str) -> tuple[str, int] | None:
    """(host, port) of the master that serves `key`'s slot, None when no one does."""
    try:
        node = cluster.get_node_from_key(key)
    except (SlotNotCoveredError, RedisClusterException, KeyError, IndexError):
        return None
    if node is None:
        return None
    return str(node.host), int(node.port)


def replica_count(cluster: RedisCluster, key: str) -> int:
    """How many replicas serve `key`'s slot beside its master, as the slot map says (0 when
    the map cannot be read: then nothing waits for replicas)."""
    manager = getattr(cluster, "nodes_manager", None)
    slots = getattr(manager, "slots_cache", None)
    try:
        return max(0, len(slots[key_slot(key)]) - 1) if slots else 0
    except (KeyError, IndexError, TypeError):
        return 0


def masters(cluster: RedisCluster) -> list[tuple[str, int]]:
    """(host, port) of every master in the client's slot map."""
    return sorted((str(node.host), int(node.port)) for node in cluster.get_primaries())


async def refresh(cluster: RedisCluster) -> None:
    """Reload the slot map from the cluster (after a failover or a lost shard)."""
    await cluster.initialize()
    manager = getattr(cluster, "nodes_manager", None)
    initialize = getattr(manager, "initialize", None)
    if initialize is not None:
        await initialize()
    else:
        await cluster.aclose()
        await cluster.initialize()


async def redirected(cluster: RedisCluster, exc: Exception) -> None:
    """A `MOVED` or `ASK` answer came to a hand-made pipeline: update the slot map (a
    `MOVED` moves one slot; anything else reloads it)."""
    manager = getattr(cluster, "nodes_manager", None)
    move_slot = getattr(manager, "move_slot", None)
    if isinstance(exc, MovedError) and move_slot is not None:
        with contextlib.suppress(Exception):
            await move_slot(exc)
            return
    await refresh(cluster)


async def node_connection(
    cluster: RedisCluster, key: str
) -> tuple[AbstractConnection, Callable[[], Awaitable[None]]]:
    """A connected connection of the master that serves `key`, and how to give it back.

    Raises:
        SlotNotCoveredError, ConnectionError, OSError: no connection could be had.
    """
    await cluster.initialize()
    node: Any = cluster.get_node_from_key(key)
    conn: AbstractConnection = node.acquire_connection()
    try:
        await conn.connect()  # type: ignore[no-untyped-call]
    except BaseException:
        node.release(conn)
        # The shard may have failed over: the next command reloads the slot map.
        with contextlib.suppress(Exception):
            await refresh(cluster)
        raise

    async def release() -> None:
        node.release(conn)

    return conn, release
