"""The stats store (`StatsStore`): one key per node, expired by Redis itself.

`rc:stats:<node>` holds the node's latest message with a time to live; the set `rc:stats`
names the nodes that put one, so that a reader finds them without scanning the keyspace.
"""

from __future__ import annotations

from redis.asyncio import Redis, RedisCluster

from . import wire

__all__ = ["all_stats", "drop_stats", "put_stats"]


async def put_stats(redis: Redis | RedisCluster, node_id: str, stats: bytes, ttl: float) -> None:
    """Replace `node_id`'s message; Redis drops it `ttl` seconds later unless put again."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.set(wire.stats_key(node_id), stats, px=max(1, round(ttl * 1000)))
        pipe.sadd(wire.STATS_KEY, node_id)
        await pipe.execute()


async def all_stats(redis: Redis | RedisCluster) -> dict[str, bytes]:
    """Every node's live message; nodes whose message expired leave the set."""
    names = sorted(
        n.decode() if isinstance(n, bytes) else n for n in await redis.smembers(wire.STATS_KEY)
    )
    if not names:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.get(wire.stats_key(name))
        values: list[bytes | None] = await pipe.execute()
    gone = [name for name, value in zip(names, values, strict=True) if value is None]
    if gone:
        # A node that puts again right after this keeps its key; its next put re-adds it.
        await redis.srem(wire.STATS_KEY, *gone)
    return {name: value for name, value in zip(names, values, strict=True) if value is not None}


async def drop_stats(redis: Redis | RedisCluster, node_id: str) -> None:
    """Remove `node_id`'s message and its name."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.delete(wire.stats_key(node_id))
        pipe.srem(wire.STATS_KEY, node_id)
        await pipe.execute()
