"""The Redis broker's webhook outbox: one stream per shard, kept in Redis until delivered.

A room's events go to the shard `crc32(room) % OUTBOX_SHARDS`, appended by APPEND_EVENTS in
one step with the room's occupancy count (so `room.occupied` / `room.vacated` are decided
once, cluster-wide); the node holding the shard's lease (CLAIM_SHARD) reads the oldest
entries, posts them, and deletes them once delivered. A node that dies leaves its shards'
entries in Redis; another node takes the lease once it expires and delivers them.

Why not a consumer group: a group hands different entries to different consumers, which
breaks the order of a room's events unless one consumer reads each shard at a time; with
that one reader (the lease), the stream's own head already says what is not yet delivered.
"""

from __future__ import annotations

import zlib
from functools import partial
from typing import Any

from ..base import OutboxEntry
from . import wire
from .calls import Calls

__all__ = ["OUTBOX_SHARDS", "Outbox"]

OUTBOX_SHARDS = 8
"""Shards of the outbox: at most this many nodes deliver webhooks at once, each shard in
order. Every node of a cluster must use the same number."""

_KINDS = {"joined": "j", "left": "l", "other": "o"}


class Outbox:
    """The outbox scripts and reads of one node.

    Args:
        calls: the node's command connections.
    """

    outbox_shards = OUTBOX_SHARDS

    def __init__(self, calls: Calls) -> None:
        self._calls = calls

    def shard_of(self, room: str) -> int:
        """The shard of `room`'s events (a stable hash, the same on every node)."""
        return zlib.crc32(room.encode()) % OUTBOX_SHARDS

    async def append_events(
        self, entries: list[OutboxEntry], max_pending: int, *, sending: int = 0
    ) -> tuple[list[int], int]:
        """Append each shard's entries in one script call (one atomic step per shard)."""
        by_shard: dict[int, list[int]] = {}
        for index, entry in enumerate(entries):
            by_shard.setdefault(self.shard_of(entry.room), []).append(index)
        bound = max(1, max_pending // OUTBOX_SHARDS)
        script = self._calls.script_append_events
        changes: list[int] = []
        dropped = 0
        for shard, indexes in by_shard.items():
            args: list[str | bytes | int] = [bound, sending]
            for index in indexes:
                entry = entries[index]
                args += [_KINDS[entry.kind], entry.room, entry.record, entry.room_record]
            result = await self._calls.call(
                partial(script, keys=wire.outbox_keys(shard), args=args)
            )
            for change in result[:-1]:
                position = indexes[abs(int(change)) - 1]
                changes.append(position + 1 if int(change) > 0 else -(position + 1))
            dropped += int(result[-1])
        # Shards were appended one after another: the caller publishes in entry order.
        changes.sort(key=abs)
        return changes, dropped

    async def claim_shard(self, shard: int, token: str, ttl: float) -> bool:
        """Take or renew the shard's lease."""
        script = self._calls.script_claim_shard
        ms = max(1, int(ttl * 1000))
        held = await self._calls.call(
            lambda: script(keys=wire.outbox_keys(shard), args=[token, ms])
        )
        return int(held) == 1

    async def release_shard(self, shard: int, token: str) -> None:
        """Give the shard's lease back (a clean stop: another node takes over at once)."""
        script = self._calls.script_release_shard
        await self._calls.run(lambda: script(keys=wire.outbox_keys(shard), args=[token]))

    async def read_events(self, shard: int, count: int) -> list[tuple[str, bytes]]:
        """The shard's oldest `count` entries."""
        redis = self._calls.redis
        key = wire.outbox_keys(shard)[0]
        entries: Any = await self._calls.call(lambda: redis.xrange(key, "-", "+", count=count))
        return [(entry_id.decode(), fields[b"e"]) for entry_id, fields in entries]

    async def ack_events(self, shard: int, ids: list[str]) -> None:
        """Delete delivered (or dropped) entries."""
        if ids:
            redis = self._calls.redis
            key = wire.outbox_keys(shard)[0]
            await self._calls.call(lambda: redis.xdel(key, *ids))
