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
  the map before its next command;
- the replies already complete in a connection's read buffer (hiredis' reader behind
  redis-py's parser), so that what one read of the socket brought is handled at once instead
  of one awaited `read_response` each; without hiredis' parser, every reply is read with
  `read_response`.

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
    ConnectionError,
    MovedError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)

try:
    from redis._parsers.hiredis import NOT_ENOUGH_DATA as _NOT_ENOUGH_DATA
    from redis._parsers.hiredis import _AsyncHiredisParser
except ImportError:  # pragma: no cover
    _AsyncHiredisParser = None  # type: ignore[assignment,misc]
    _NOT_ENOUGH_DATA = False

__all__ = [
    "CLUSTER_FAULTS",
    "POOLED",
    "REDIRECTS",
    "buffered_replies",
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


def buffered_replies(conn: AbstractConnection, limit: int) -> list[Any]:
    """Up to `limit` replies already complete in `conn`'s read buffer, in order, undecoded,
    without reading the socket (an error reply comes as its `ResponseError`); none when the
    connection's parser is not hiredis' or speaks RESP3 (then each is read with
    `read_response`).

    Raises:
        ConnectionError: the parser found the stream broken.
    """
    parser: Any = getattr(conn, "_parser", None)
    if (
        _AsyncHiredisParser is None
        or type(parser) is not _AsyncHiredisParser
        or str(getattr(conn, "protocol", 2)) != "2"
    ):
        return []
    reader = getattr(parser, "_reader", None)
    if reader is None:
        return []
    replies: list[Any] = []
    while len(replies) < limit:
        reply = reader.gets(False)
        if reply is _NOT_ENOUGH_DATA or reply is False:
            break
        if isinstance(reply, ConnectionError):
            raise reply
        replies.append(reply)
    return replies


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
