"""Rooms spread over several independent Redis servers: `redis://H1:P1/0,redis://H2:P2/0,...`.

:class:`ShardedBroker` is a composition of whole brokers, one per server (a `RedisBroker`
each), on top of the `Broker` interface: each room lives on one of them, chosen by a jump
consistent hash of the room ID (:func:`shard_of`), with its offsets, history, presence and
channel. Everything else follows from that:

- a node holds a lease, a member set and a subscription connection on every server, and every
  server's survivors sweep its dead nodes, so a dead node's members leave within the presence
  bound on all of them, each announced once;
- a server that cannot be reached makes only its rooms `unavailable`; the others go on
  (:meth:`ShardedBroker.shards_down` says which are down, for `/readyz`);
- what is not a room's (the stats messages of the admin page) lives on the first server;
  the listing of every room asks them all.

Each server records its place in the list (brokers/redis/layout.py), so that a node started
with the servers in another order, or with another number of them, is refused instead of
looking for rooms where the others do not. docs/architecture.md ("Several Redis servers")
explains the hash and what adding a server does to the rooms' history.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import BrokerUnavailable, ConfigError
from ..log import log_event, redact_url
from ..protocol import IDEMPOTENCY_WINDOW
from .base import (
    Broker,
    BrokerListener,
    DeferredPublish,
    HistoryPage,
    OutboxEntry,
    Publication,
    Signal,
    StatsStore,
    WebhookOutbox,
)

if TYPE_CHECKING:
    from ..room_classes import RoomClasses

__all__ = ["ShardedBroker", "jump_hash", "shard_of"]

_MASK = (1 << 64) - 1


def jump_hash(key: int, buckets: int) -> int:
    """The bucket (0 to `buckets - 1`) of a 64-bit `key`: Lamping and Veach's jump consistent
    hash ("A Fast, Minimal Memory, Consistent Hash Algorithm", 2014). Going from n to n + 1
    buckets moves a share of 1/(n + 1) of the keys, all of them to the new bucket."""
    bucket, jump = -1, 0
    while jump < buckets:
        bucket = jump
        key = (key * 2862933555777941757 + 1) & _MASK
        jump = int((bucket + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return bucket


def shard_of(room: str, shards: int) -> int:
    """The server (its index in the list) that holds `room`: the jump hash of the first 8
    bytes (little-endian) of the room ID's BLAKE2b digest; the same on every node and
    every run."""
    digest = hashlib.blake2b(room.encode(), digest_size=8).digest()
    return jump_hash(int.from_bytes(digest, "little"), shards)


LayoutCheck = Callable[[int, str], Any]
"""`check(index, node_id)`: an awaitable that records or checks server `index`'s place in the
list; raises `ConfigError` for a mismatch, anything else when the server is unreachable."""


class ShardedBroker:
    """Delivery, presence and history with each room on one of several brokers.

    Args:
        shards: one broker per server, in the order every node lists them.
        names: what to call each in logs and `/readyz` (redacted URLs).
        check_layout: records or checks each server's place in the list (a node with
            presence does it when a server is first reached); None for none.
    """

    def __init__(
        self,
        shards: Sequence[Broker],
        names: Sequence[str],
        *,
        check_layout: LayoutCheck | None = None,
    ) -> None:
        if len(shards) < 2 or len(names) != len(shards):
            raise ValueError("a sharded broker needs two shards or more, each with a name")
        self.shards = list(shards)
        self.names = list(names)
        self.batches_publishes = all(getattr(s, "batches_publishes", False) for s in shards)
        """Whether publishes share round trips (every shard batches its own)."""
        self._check_layout = check_layout
        self._checked = [check_layout is None] * len(shards)
        """Per shard, whether its place in the list was confirmed (calls go to it only then)."""
        self._mismatch: list[str | None] = [None] * len(shards)
        self._checking: dict[int, asyncio.Task[None]] = {}
        """Checks under way of shards first reached after the start."""
        self._listener: BrokerListener | None = None
        self._reported = False
        """The availability last reported to the listener (any shard usable)."""
        self.node_id = ""
        self._starts: list[int] | None = None
        """Where each server's outbox shards start (`_outbox_starts`)."""

    @classmethod
    def from_urls(
        cls,
        urls: Sequence[str],
        *,
        history_size: int = 100,
        history_ttl: float = 300.0,
        presence_ttl: float = 15.0,
        presence: bool = True,
        classes: RoomClasses | None = None,
        idempotency_window: float = IDEMPOTENCY_WINDOW,
    ) -> ShardedBroker:
        """One `RedisBroker` per URL, each with the options given (see `RedisBroker`); with
        `presence`, each server's place in the list is recorded and checked."""
        from .redis import RedisBroker
        from .redis.layout import LayoutMismatch, check_layout

        count = len(urls)

        async def check(index: int, node_id: str) -> None:
            try:
                await check_layout(urls[index], index, count, node_id)
            except LayoutMismatch as exc:
                raise ConfigError(
                    f"broker server #{index} ({redact_url(urls[index])}): {exc}"
                ) from None

        return cls(
            [
                RedisBroker(
                    url,
                    history_size=history_size,
                    history_ttl=history_ttl,
                    presence_ttl=presence_ttl,
                    presence=presence,
                    classes=classes,
                    idempotency_window=idempotency_window,
                )
                for url in urls
            ],
            [redact_url(url) for url in urls],
            check_layout=check if presence else None,
        )

    def shard(self, room: str) -> int:
        """The index of the shard that holds `room`."""
        return shard_of(room, len(self.shards))

    def _usable(self, index: int) -> bool:
        return self._checked[index] and self.shards[index].available

    def _of(self, room: str) -> Broker:
        index = shard_of(room, len(self.shards))
        if not self._checked[index]:
            raise BrokerUnavailable(
                "the broker (redis) is unavailable: "
                + (self._mismatch[index] or "its server's place in the list is not checked yet")
            )
        return self.shards[index]

    # lifecycle

    @property
    def available(self) -> bool:
        """Whether at least one shard can be used (a node is ready: see docs/configuration.md,
        "Readiness")."""
        return any(self._usable(i) for i in range(len(self.shards)))

    async def start(self, node_id: str, listener: BrokerListener) -> None:
        """Check each reachable server's place in the list, then start every shard (each
        waits, bounded, for its first attempt to connect).

        Raises:
            ConfigError: a server holds another place in the list on the running nodes.
        """
        self.node_id = node_id
        self._listener = listener
        if self._check_layout is not None:
            results = await asyncio.gather(
                *(self._check(i) for i in range(len(self.shards))), return_exceptions=True
            )
            for result in results:
                if isinstance(result, ConfigError):
                    raise result
        await asyncio.gather(
            *(
                shard.start(node_id, _ShardListener(self, i, listener))
                for i, shard in enumerate(self.shards)
            )
        )

    async def _check(self, index: int) -> None:
        """Confirm shard `index`'s place; a shard that cannot be reached now stays unchecked
        (checked when it connects); a mismatch is kept as the reason its rooms are refused."""
        assert self._check_layout is not None
        try:
            await self._check_layout(index, self.node_id)
        except ConfigError as exc:
            self._mismatch[index] = exc.message
            log_event("broker.layout_mismatch", level=50, node_id=self.node_id, error=exc.message)
            raise
        except Exception as exc:
            log_event(
                "broker.layout_unchecked",
                level=30,
                node_id=self.node_id,
                server=index,
                address=self.names[index],
                error=repr(exc),
            )
            return
        self._checked[index] = True

    async def close(self) -> None:
        """Close every shard (each bounded on its own), at the same time."""
        for task in self._checking.values():
            task.cancel()
        await asyncio.gather(*(shard.close() for shard in self.shards), return_exceptions=True)

    def _shard_state(self, index: int, available: bool) -> None:
        """A shard's connection came or went: check its place the first time it comes, and
        tell the listener (the whole broker when availability changed, else that shard's
        rooms, to repair from history)."""
        if available and not self._checked[index]:
            if (
                self._mismatch[index] is None
                and self._check_layout is not None
                and index not in self._checking
            ):
                task = asyncio.get_running_loop().create_task(self._checked_later(index))
                self._checking[index] = task
                task.add_done_callback(lambda _: self._checking.pop(index, None))
            return
        self._report(index, available)

    async def _checked_later(self, index: int) -> None:
        try:
            await self._check(index)
        except ConfigError:
            return
        if self._checked[index]:
            self._report(index, True)

    def _report(self, index: int, available: bool) -> None:
        listener = self._listener
        if listener is None:
            return
        now = self.available
        if now != self._reported:
            self._reported = now
            listener.on_broker_state(now)
        elif available:
            count = len(self.shards)
            listener.on_broker_state(True, rooms=lambda room: shard_of(room, count) == index)

    # what a room's shard does

    async def subscribe(self, room: str) -> None:
        """Subscribe on the room's shard."""
        await self._of(room).subscribe(room)

    async def unsubscribe(self, room: str) -> None:
        """Unsubscribe on the room's shard (its own shard even when unchecked)."""
        await self.shards[self.shard(room)].unsubscribe(room)

    async def publish(
        self,
        room: str,
        prefix: str,
        to: str | None = None,
        exclude: str | None = None,
        *,
        key: str | None = None,
    ) -> Publication:
        """Publish on the room's shard (its idempotency key with it, in the room's keys
        there); see `Broker.publish`."""
        return await self._of(room).publish(room, prefix, to, exclude, key=key)

    def publish_soon(
        self,
        room: str,
        prefix: str,
        to: str | None = None,
        exclude: str | None = None,
        *,
        key: str | None = None,
    ) -> asyncio.Future[Publication]:
        """:meth:`publish`, queued on the room's shard (see `DeferredPublish`)."""
        try:
            shard = self._of(room)
        except Exception as exc:
            failed: asyncio.Future[Publication] = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            return failed
        if isinstance(shard, DeferredPublish):
            return shard.publish_soon(room, prefix, to, exclude, key=key)
        return asyncio.ensure_future(shard.publish(room, prefix, to, exclude, key=key))

    async def publish_ephemeral(
        self,
        room: str,
        frame: str,
        to: str | None = None,
        exclude: str | None = None,
        *,
        key: str | None = None,
    ) -> tuple[int, str] | None:
        """Deliver an ephemeral frame through the room's shard; see `Broker.publish_ephemeral`."""
        return await self._of(room).publish_ephemeral(room, frame, to, exclude, key=key)

    async def seen_key(self, room: str, key: str) -> tuple[int, str] | None:
        """The room's shard's answer; see `Broker.seen_key`."""
        return await self._of(room).seen_key(room, key)

    async def signal(self, signal: Signal) -> None:
        """Announce a signal on its room's shard."""
        await self._of(signal.room).signal(signal)

    async def history(
        self, room: str, since: int | None = None, limit: int | None = None
    ) -> HistoryPage:
        """The room's history, from its shard."""
        return await self._of(room).history(room, since, limit)

    async def read_join(
        self,
        room: str,
        since: int | None = None,
        limit: int | None = None,
        *,
        members: bool = True,
        signals: Sequence[Signal] = (),
    ) -> tuple[HistoryPage, list[str]]:
        """The rest of a join, on the room's shard; see `Broker.read_join`."""
        return await self._of(room).read_join(room, since, limit, members=members, signals=signals)

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
        """Add to the room's presence, on its shard; see `Broker.add_member`."""
        return await self._of(room).add_member(
            room, username, connection_id, replace=replace, share=share, max_members=max_members
        )

    async def remove_member(
        self, room: str, username: str, connection_id: str, *, signal: Signal | None = None
    ) -> bool:
        """Remove from the room's presence, on its shard (which keeps the entry aside to remove
        it once it is back, when it is unreachable)."""
        shard = self.shards[self.shard(room)]
        return await shard.remove_member(room, username, connection_id, signal=signal)

    async def has_member(self, room: str, username: str) -> bool:
        """Whether the room's shard lists `username` in it."""
        return await self._of(room).has_member(room, username)

    async def members(self, room: str) -> list[str]:
        """The room's members, from its shard."""
        return await self._of(room).members(room)

    # what spans the shards

    async def rooms(self) -> dict[str, list[str]]:
        """Every room with members, from every shard.

        Raises:
            BrokerUnavailable: a shard cannot be reached (a listing without its rooms would
                look complete).
        """
        results = await asyncio.gather(
            *(self._listing(i) for i in range(len(self.shards))), return_exceptions=True
        )
        down = [i for i, r in enumerate(results) if isinstance(r, BrokerUnavailable)]
        if down:
            shards = ", ".join(f"#{i}" for i in down)
            raise BrokerUnavailable(
                f"the broker (redis) is unavailable: the rooms of server {shards} cannot be listed"
            )
        listing: dict[str, list[str]] = {}
        for result in results:
            if isinstance(result, BaseException):
                raise result
            listing.update(result)
        return dict(sorted(listing.items()))

    async def _listing(self, index: int) -> dict[str, list[str]]:
        if not self._checked[index]:
            raise BrokerUnavailable("unchecked")
        return await self.shards[index].rooms()

    async def ping(self) -> None:
        """Return when at least one shard answers; raise `BrokerUnavailable` when none does."""
        await self.shards_down()

    async def shards_down(self) -> list[str]:
        """Ping every shard at once: those that do not answer (or whose place in the list is
        not confirmed), as `#<index> <address>`; see `ShardedHealth`.

        Raises:
            BrokerUnavailable: no shard answers.
        """
        results = await asyncio.gather(
            *(self._ping(i) for i in range(len(self.shards))), return_exceptions=True
        )
        down = [
            f"#{i} {self.names[i]}"
            for i, result in enumerate(results)
            if isinstance(result, BaseException)
        ]
        if len(down) == len(self.shards):
            raise BrokerUnavailable(
                f"the broker (redis) is unavailable: no server answers ({', '.join(down)})"
            )
        return down

    async def _ping(self, index: int) -> None:
        if not self._checked[index]:
            raise BrokerUnavailable(self._mismatch[index] or "not checked")
        await self.shards[index].ping()

    # the stats of the admin page: on the first shard

    def _stats(self) -> StatsStore:
        first = self.shards[0]
        if not isinstance(first, StatsStore):
            raise BrokerUnavailable("the first broker server keeps no stats")
        return first

    async def put_stats(self, node_id: str, stats: bytes, ttl: float) -> None:
        """Replace this node's stats message, on the first shard; see `StatsStore`."""
        await self._stats().put_stats(node_id, stats, ttl)

    async def all_stats(self) -> dict[str, bytes]:
        """Every live node's stats message, from the first shard; see `StatsStore`."""
        return await self._stats().all_stats()

    async def drop_stats(self, node_id: str) -> None:
        """Remove this node's stats message, on the first shard; see `StatsStore`."""
        await self._stats().drop_stats(node_id)

    # the webhook outbox: each server's outbox shards, numbered one server after the other

    @property
    def outbox_shards(self) -> int:
        """Every server's outbox shards (`WebhookOutbox`): a room's events stay on the server
        that holds the room."""
        return self._outbox_starts()[-1]

    def _outbox(self, index: int) -> WebhookOutbox:
        shard = self.shards[index]
        if not isinstance(shard, WebhookOutbox):
            raise BrokerUnavailable(f"broker server #{index} keeps no webhook outbox")
        return shard

    def _outbox_starts(self) -> list[int]:
        """Where each server's outbox shards start in the overall numbering, then the total
        (counted once: a server's number of outbox shards does not change)."""
        if self._starts is None:
            starts = [0]
            for index in range(len(self.shards)):
                starts.append(starts[-1] + self._outbox(index).outbox_shards)
            self._starts = starts
        return self._starts

    def _locate(self, shard: int) -> tuple[WebhookOutbox, int]:
        """The server's outbox and its own number for the overall outbox shard `shard`."""
        starts = self._outbox_starts()
        index = bisect.bisect_right(starts, shard) - 1
        if not 0 <= index < len(self.shards):
            raise ValueError(f"no outbox shard {shard}")
        return self._outbox(index), shard - starts[index]

    def shard_of(self, room: str) -> int:
        """The overall outbox shard of `room`'s events: on the room's server."""
        index = self.shard(room)
        return self._outbox_starts()[index] + self._outbox(index).shard_of(room)

    async def append_events(
        self, entries: list[OutboxEntry], max_pending: int, *, sending: int = 0
    ) -> tuple[list[int], int]:
        """Keep each entry on its room's server (in order per server, so per room); see
        `WebhookOutbox.append_events`."""
        positions: dict[int, list[int]] = {}
        for position, entry in enumerate(entries):
            positions.setdefault(self.shard(entry.room), []).append(position)
        total = self.outbox_shards

        def bound(index: int) -> int:
            # Each server splits what it is given over its own shards: give it its share, so
            # that every outbox shard keeps max_pending / outbox_shards, as on one server.
            return max_pending * self._outbox(index).outbox_shards // total

        results = await asyncio.gather(
            *(
                self._outbox(index).append_events(
                    [entries[p] for p in where], bound(index), sending=sending
                )
                for index, where in positions.items()
            )
        )
        changes: list[int] = []
        dropped = 0
        for where, (changed, lost) in zip(positions.values(), results, strict=True):
            dropped += lost
            for change in changed:
                position = where[abs(change) - 1] + 1
                changes.append(position if change > 0 else -position)
        changes.sort(key=abs)
        return changes, dropped

    async def claim_shard(self, shard: int, token: str, ttl: float) -> bool:
        """Take or renew the lease of an outbox shard, on its server."""
        outbox, local = self._locate(shard)
        return await outbox.claim_shard(local, token, ttl)

    async def release_shard(self, shard: int, token: str) -> None:
        """Give an outbox shard's lease back, on its server."""
        outbox, local = self._locate(shard)
        await outbox.release_shard(local, token)

    async def read_events(self, shard: int, count: int) -> list[tuple[str, bytes]]:
        """The oldest entries of an outbox shard, from its server."""
        outbox, local = self._locate(shard)
        return await outbox.read_events(local, count)

    async def ack_events(self, shard: int, ids: list[str]) -> None:
        """Forget delivered entries of an outbox shard, on its server."""
        outbox, local = self._locate(shard)
        await outbox.ack_events(local, ids)


class _ShardListener:
    """What one shard delivers: room traffic goes to the node as it is; the shard's state
    goes through the sharded broker, which knows what it means for the whole."""

    def __init__(self, owner: ShardedBroker, index: int, listener: BrokerListener) -> None:
        self._owner = owner
        self._index = index
        self._listener = listener

    def on_publication(self, publication: Publication) -> None:
        """A message of one of the shard's rooms."""
        self._listener.on_publication(publication)

    def on_signal(self, signal: Signal) -> None:
        """A signal of one of the shard's rooms."""
        self._listener.on_signal(signal)

    def on_members_lost(self, room: str, usernames: list[str], node_id: str) -> None:
        """A dead node's members of one of the shard's rooms."""
        self._listener.on_members_lost(room, usernames, node_id)

    def on_broker_state(self, available: bool, rooms: Callable[[str], bool] | None = None) -> None:
        """The shard's connection came or went."""
        self._owner._shard_state(self._index, available)
