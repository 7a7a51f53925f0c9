"""Which place a Redis server holds in a list of several (sharding): recorded on the server.

Every node of a sharded cluster must list the same servers in the same order, or it would look
for a room on another server than the others do. Each server keeps `rc:layout` =
`<index>/<count>`, the place the nodes gave it; a node that starts with another place for it
(a reordered, longer or shorter list) is refused while a node with the recorded place is alive
(holds a lease there). Once none is (every node was stopped to change the list), the first node
with the new list records it: that is how servers are added (docs/configuration.md).
"""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from ...log import log_event
from . import wire
from .calls import pool_from_url

__all__ = ["LAYOUT_KEY", "LayoutMismatch", "check_layout"]

LAYOUT_KEY = f"{wire.KEY_PREFIX}layout"
CHECK_TIMEOUT = 3.0
"""Seconds the check may take (the server did not answer: it is checked once it does)."""


class LayoutMismatch(Exception):
    """This server is recorded at another place in the list than this node gives it."""


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


async def check_layout(url: str, index: int, count: int, node_id: str) -> None:
    """Record or check this server's place (`index` of `count`) in the node's list.

    Raises:
        LayoutMismatch: the server holds another place and a node holding a lease there
            (other than `node_id`) was started with it.
        BrokerUnavailable, OSError, RedisError: the server cannot be reached now.
    """
    want = f"{index}/{count}"
    redis = Redis(connection_pool=pool_from_url(url))
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            if await redis.set(LAYOUT_KEY, want, nx=True):
                return
            held = _text(await redis.get(LAYOUT_KEY))
            if held in (want, None):
                await redis.set(LAYOUT_KEY, want)
                return
            nodes = sorted(n for n in (_text(m) for m in await redis.smembers(wire.NODES_KEY)) if n)
            others = [n for n in nodes if n != node_id]
            alive = [n for n in others if await redis.exists(wire.lease_key(n))]
            if alive:
                raise LayoutMismatch(
                    f"this Redis server is #{held} of the broker list on the running nodes "
                    f"({', '.join(alive[:3])}{', ...' if len(alive) > 3 else ''}), but #{want} "
                    f"here: every node must list the same servers in the same order (to change "
                    f"the list, stop every node first; see docs/configuration.md)"
                )
            await redis.set(LAYOUT_KEY, want)
            log_event("broker.layout_changed", level=30, server=index, was=held, now=want)
    finally:
        await redis.aclose()
        await redis.connection_pool.disconnect()
