"""The Redis broker's subscriptions on a Redis Cluster: one connection per shard.

:class:`ClusterSubscriber` keeps one subscription connection (subscriber.py, in its sharded
form) per master that serves a room of this node, and moves a room to its slot's new master
when the map changes: a master that fails (its connection is lost, the cluster promotes a
replica) or a slot that moves (Redis ends the room's sharded subscription with a
`sunsubscribe`). Each shard's subscription that comes back runs the node's reconnect
handling (presence upkeep, then every room repaired from its stream), so what was published
while the room was not heard is delivered, in order, before anything later.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable

from redis.asyncio import RedisCluster

from ...errors import BrokerUnavailable
from ...log import log_event
from ..base import BrokerListener
from . import redispy, wire
from .cluster import shard_url
from .subscriber import Subscriber as ShardSubscription

__all__ = ["WATCH_INTERVAL", "ClusterSubscriber"]

WATCH_INTERVAL = 0.5
"""Seconds between two reloads of the slot map while a room of this node has no live shard."""


class ClusterSubscriber:
    """The subscriptions of one node on a Redis Cluster: one connection per master.

    Holds the same interface as :class:`~.subscriber.Subscriber` (the broker uses either).

    Args:
        url: the `redis+cluster://` URL.
        cluster: the node's cluster client (its slot map says which master serves a room).
        make_shard: builds the subscription of one master from its `redis://` URL and its
            two callbacks (connected with its number of rooms, lost with the cause).
        on_connected: called when a shard's subscription (re)connected and resubscribed: the
            broker runs its reconnect handling (presence upkeep, available, repair).
        on_lost: called when the last live shard's subscription was lost.
    """

    def __init__(
        self,
        url: str,
        *,
        cluster: RedisCluster,
        make_shard: Callable[..., ShardSubscription],
        on_connected: Callable[[int], Awaitable[None]],
        on_lost: Callable[[BaseException], None],
    ) -> None:
        self._url = url
        self._cluster = cluster
        self._make_shard = make_shard
        self._on_connected = on_connected
        self._on_lost = on_lost
        self.node_id = ""
        self._listener: BrokerListener | None = None
        self._shards: dict[tuple[str, int], ShardSubscription] = {}
        self._tasks: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._up: set[tuple[str, int]] = set()
        """Masters whose subscription is connected."""
        self._rooms: dict[str, tuple[str, int] | None] = {}
        """Rooms this node wants to receive, with the master that serves them (None: none
        reachable yet)."""
        self._closing: Callable[[], bool] = lambda: False
        self._changed = asyncio.Event()
        """Set when the slot map may have changed (a shard lost, a room ended by Redis)."""

    @property
    def listener(self) -> BrokerListener | None:
        """The node's listener, given to every shard's subscription."""
        return self._listener

    @listener.setter
    def listener(self, listener: BrokerListener | None) -> None:
        self._listener = listener
        for shard in self._shards.values():
            shard.listener = listener

    @property
    def connected(self) -> bool:
        """Whether at least one shard's subscription is up."""
        return bool(self._up)

    def serves(self, room: str) -> bool:
        """Whether this node receives `room`."""
        return room in self._rooms

    def shard_of(self, room: str) -> tuple[str, int] | None:
        """The master whose subscription carries `room` (None when none does)."""
        return self._rooms.get(room)

    async def subscribe(self, room: str) -> None:
        """Subscribe to the room on its shard and wait for the shard to confirm it.

        Raises:
            BrokerUnavailable: the room's shard is down (only its rooms are unavailable).
        """
        address = redispy.master_for(self._cluster, wire.room_slot_key(room))
        shard = self._shards.get(address) if address is not None else None
        if address is None or shard is None or address not in self._up:
            self._changed.set()
            raise BrokerUnavailable(f"cannot subscribe to room {room!r}: its shard is down")
        self._rooms[room] = address
        try:
            await shard.subscribe(room)
        except BrokerUnavailable:
            self._rooms.pop(room, None)
            self._changed.set()
            raise

    async def unsubscribe(self, room: str) -> None:
        """Stop receiving the room."""
        address = self._rooms.pop(room, None)
        shard = self._shards.get(address) if address is not None else None
        if shard is not None:
            await shard.unsubscribe(room)

    # the shards

    async def run(self, closing: Callable[[], bool]) -> None:
        """Read the slot map, keep one subscription per master, and follow the map: reload
        it at once when a shard is lost or Redis ends a room's subscription, and every
        `WATCH_INTERVAL` while a room of this node has no live shard."""
        self._closing = closing
        attempt = 0
        while not closing():
            try:
                await redispy.refresh(self._cluster)
                self._follow()
                attempt = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                attempt += 1
                if not self._shards:
                    self._on_lost(exc)
            healthy = self._shards and all(
                address is not None and address in self._up for address in self._rooms.values()
            )
            timeout = None if healthy else WATCH_INTERVAL * random.uniform(0.8, 1.0)
            if attempt:
                timeout = min(5.0, 0.1 * 2 ** min(attempt, 6))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._changed.wait()
            self._changed.clear()

    def _follow(self) -> None:
        """Start a subscription for each master of the map, stop those of former masters
        and move the rooms whose slot is now served by another master."""
        current = set(redispy.masters(self._cluster))
        for address in current - self._shards.keys():
            self._start(address)
        for room, held_by in list(self._rooms.items()):
            owner = redispy.master_for(self._cluster, wire.room_slot_key(room))
            shard = self._shards.get(held_by) if held_by is not None else None
            if owner != held_by or shard is None or not shard.serves(room):
                self._move(room, held_by, owner)
        for former in set(self._shards) - current:
            if former not in self._rooms.values():
                self._stop(former)

    def _move(self, room: str, old: tuple[str, int] | None, new: tuple[str, int] | None) -> None:
        log_event("broker.room_moved", node_id=self.node_id, room=room, to=_name(new))
        if old is not None and (shard := self._shards.get(old)) is not None:
            shard.forget(room)
        self._rooms[room] = new
        if new is not None and (shard := self._shards.get(new)) is not None:
            # The new shard resubscribes it when it (re)connects, and repairs it then.
            shard.adopt(room)
            if new in self._up:
                asyncio.get_running_loop().create_task(self._resubscribe(room, shard))

    async def _resubscribe(self, room: str, shard: ShardSubscription) -> None:
        try:
            await shard.subscribe(room)
        except BrokerUnavailable:
            self._changed.set()
            return
        await self._on_connected(len(self._rooms))

    def _start(self, address: tuple[str, int]) -> None:
        host, port = address

        async def connected(rooms: int) -> None:
            self._up.add(address)
            log_event("broker.shard_connected", node_id=self.node_id, shard=_name(address))
            await self._on_connected(len(self._rooms))

        def lost(exc: BaseException) -> None:
            was = address in self._up
            self._up.discard(address)
            self._changed.set()
            if was:
                log_event(
                    "broker.shard_lost",
                    level=30,
                    node_id=self.node_id,
                    shard=_name(address),
                    error=repr(exc),
                )
            if not self._up:
                self._on_lost(exc)

        shard = self._make_shard(
            shard_url(self._url, host, port), on_connected=connected, on_lost=lost
        )
        shard.node_id = self.node_id
        shard.listener = self._listener
        shard.on_ended = self._ended
        self._shards[address] = shard
        self._tasks[address] = asyncio.get_running_loop().create_task(
            shard.run(self._closing), name=f"roomcast-redis-shard-{host}:{port}"
        )

    def _stop(self, address: tuple[str, int]) -> None:
        shard = self._shards.pop(address)
        self._up.discard(address)
        task = self._tasks.pop(address, None)
        if task is not None:
            task.cancel()
        asyncio.get_running_loop().create_task(shard.close())

    def _ended(self, room: str) -> None:
        """Redis ended a room's subscription (its slot moved): follow the map."""
        self._changed.set()

    async def drop(self) -> None:
        """Close every shard's connection."""
        for shard in self._shards.values():
            await shard.drop()

    async def close(self) -> None:
        """Stop every shard's subscription and disconnect."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        for shard in list(self._shards.values()):
            await shard.close()
        self._shards.clear()
        self._tasks.clear()
        self._up.clear()


def _name(address: tuple[str, int] | None) -> str:
    return "none" if address is None else f"{address[0]}:{address[1]}"
