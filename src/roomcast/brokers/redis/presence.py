"""The Redis broker's presence: members, the node's lease, the sweeper, orphans, re-adding.

- A room's presence is a hash username -> `node_id:connection_id` (under the `share`
  policy, several such tokens separated by spaces: one per connection of the user, on any
  node); joins and leaves are scripts (ADD_MEMBER, REMOVE_MEMBER), so uniqueness and the
  first-join / last-leave decisions are cluster-wide. A dead node's sweep takes out only its
  own tokens: a user still connected elsewhere stays present.
- Each token has an entry in its node's member set. The two live in different hash slots
  (the room's, the node's), so they are written in an order that keeps one rule through any
  crash: a token in presence always has its entry (a join adds the entry first, a leave
  removes it last); an entry without a token is harmless (a sweep finds nothing to remove).
- Each node holds a lease key, renewed every `presence_ttl / 6`; every node sweeps the ids
  whose lease is gone (SWEEP_CLAIM, SWEEP_ROOMS, SWEEP_DONE: scripts.py tells the steps),
  and exactly one survivor gets each dead node's members back to announce.
- A member that leaves while Redis is unreachable is an orphan, removed once Redis is back.
- A live node whose lease lapsed (a stall, an outage) adds its members back.

docs/architecture.md ("Presence, leases and the sweeper") has the whole story.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from ...errors import BrokerUnavailable
from ...log import log_event
from ..base import BrokerListener, DuplicateMember, RoomFull, Signal
from . import wire
from .calls import Calls

__all__ = ["Presence"]

SWEEP_BATCH = 256
"""Entries of a dead node removed per SWEEP_ROOMS call (each call is one atomic step)."""
REMOVED_HERE, REMOVED_ELSEWHERE = 1, 2
"""SWEEP_ROOMS statuses: this sweeper removed the member; another one did (and must learn it)."""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Presence:
    """Presence entries, lease and sweeper of one node.

    Args:
        calls: the node's command connections.
        channel_prefix: the start of the room channels, for the signals it announces.
        presence_ttl: bound, in seconds, on how long a dead node's members stay in presence.
        history_ttl_ms: what a room's offset and epoch get when its last member leaves (its
            class's `history_ttl`, in milliseconds).
        longest_ttl_ms: what they get when a sweep empties the room (one sweep takes the
            rooms of many classes: the longest ttl, so that no room loses its offsets
            before its stream; a stream that expired first makes a resume say
            `recovered: false`, as it should).
    """

    def __init__(
        self,
        calls: Calls,
        *,
        channel_prefix: str,
        presence_ttl: float,
        history_ttl_ms: Callable[[str], int],
        longest_ttl_ms: int,
    ) -> None:
        self._calls = calls
        self._channel_prefix = channel_prefix
        self._room_ttl_ms = history_ttl_ms
        self._history_ttl_ms = longest_ttl_ms
        # A lease of 2/3 of the bound, renewed and swept every 1/6: a dead node's members
        # are removed at most ~5/6 of `presence_ttl` after its last renewal.
        self.lease_ms = max(500, int(presence_ttl * 1000 * 2 / 3))
        self.tick = presence_ttl / 6
        self.node_id = ""
        self.listener: BrokerListener | None = None
        self.connected_at = 0.0
        """When the subscription last connected (the sweeper waits a lease after it)."""
        self._lease_token = secrets.token_hex(8)
        self._members: dict[tuple[str, str, str], bool] = {}
        """This node's presence entries: (room, username, connection id) -> shared."""
        self._orphans: set[tuple[str, str, str]] = set()
        """Entries of members gone while Redis was unreachable, to remove when it is back."""
        self._own_entries_removed = False
        """Whether entries left under this node id by an earlier process were removed."""
        self._upkeep = asyncio.Lock()
        """Held by `on_connected`: on a Redis Cluster every shard's subscription (re)connects
        on its own, and the removal of an earlier process's entries must run once, before
        this node's first member (a second run would remove members added since)."""
        self._leaving = False
        """Whether a clean stop (`leave_all`) began."""
        self._readd_again = False
        """Whether the lease lapsed at the last renewal: the members are put back once more
        at the next, in case a sweep that claimed them before the renewal removed them
        after it was put back (its steps are not one atomic script)."""

    # what the node's clients call

    async def _add(
        self,
        room: str,
        username: str,
        connection_id: str,
        mode: str,
        max_members: int = 0,
        *,
        upkeep: bool = False,
    ) -> Any:
        """A join's two steps: the entry in this node's member set, then the token in the
        room's presence; a refused join takes its entry out again (`upkeep`: the node's
        own, which runs while it reconnects; see `Calls.steps`)."""
        members = wire.member_set_key(self.node_id)
        entry = wire.member_entry(room, username, connection_id)
        script = self._calls.script_add
        keys = wire.presence_keys(room)
        args = [username, wire.presence_value(self.node_id, connection_id), mode, max_members]
        steps: list[Any] = [("SADD", members, entry), (script, keys, args)]
        _, result = await self._calls.steps(steps, again=steps, upkeep=upkeep)
        if int(result[0]) in (0, 4):
            await self._calls.run(lambda: self._calls.redis.srem(members, entry))
        return result

    async def _remove(
        self,
        room: str,
        username: str,
        connection_id: str,
        *,
        upkeep: bool = False,
        signal: Signal | None = None,
    ) -> Any:
        """A leave's two steps: the token out of the room's presence, then the entry out of
        this node's member set (`upkeep`: as for `_add`)."""
        members = wire.member_set_key(self.node_id)
        entry = wire.member_entry(room, username, connection_id)
        script = self._calls.script_remove
        keys = wire.presence_keys(room)
        args = [
            username,
            wire.presence_value(self.node_id, connection_id),
            self._room_ttl_ms(room),
        ]
        if signal is not None:
            args += [wire.channel(self._channel_prefix, room), wire.encode_signal(signal)]
        steps: list[Any] = [(script, keys, args), ("SREM", members, entry)]
        # Refused for want of the script, the token stayed while the entry went: put the
        # entry back before trying again.
        again: list[Any] = [("SADD", members, entry), *steps]
        removed, _ = (await self._calls.steps(steps, again=again, upkeep=upkeep))[-2:]
        return removed

    async def add_member(
        self,
        room: str,
        username: str,
        connection_id: str,
        *,
        replace: bool,
        share: bool = False,
        max_members: int | None = None,
    ) -> str | None:
        """Add to the room's presence (atomically unique, within `max_members`); see
        `Broker.add_member`."""
        mode = "2" if share else "1" if replace else "0"
        status, previous = await self._add(room, username, connection_id, mode, max_members or 0)
        if int(status) == 0:
            raise DuplicateMember(username)
        if int(status) == 4:
            raise RoomFull(room)
        self._members[(room, username, connection_id)] = share
        if int(status) == 3:
            return _text(previous)
        if int(status) == 2 or not previous:
            return None
        return wire.connection_of(previous)

    async def remove_member(
        self, room: str, username: str, connection_id: str, *, signal: Signal | None = None
    ) -> bool:
        """Compare-and-delete this connection's presence entry; when the username left,
        REMOVE_MEMBER announces `signal` in the same step."""
        self._members.pop((room, username, connection_id), None)
        try:
            removed = await self._remove(room, username, connection_id, signal=signal)
        except BrokerUnavailable:
            # The entry must not outlive the connection: removed once Redis is back.
            self._orphans.add((room, username, connection_id))
            raise
        return bool(removed)

    async def has_member(self, room: str, username: str) -> bool:
        """Whether the room's presence holds `username` (any node)."""
        redis = self._calls.redis
        return bool(
            await self._calls.call(lambda: redis.hexists(wire.presence_key(room), username))
        )

    async def members(self, room: str) -> list[str]:
        """Sorted usernames of the room, cluster-wide."""
        redis = self._calls.redis
        names = await self._calls.call(lambda: redis.hkeys(wire.presence_key(room)))
        return sorted(_text(n) for n in names)

    async def rooms(self) -> dict[str, list[str]]:
        """Every room with members, cluster-wide: the rooms of every node's member set
        (one key per node, where a room-wide set would span slots), then their presence."""
        redis = self._calls.redis

        async def read() -> dict[str, list[str]]:
            nodes = sorted(_text(n) for n in await redis.smembers(wire.NODES_KEY))
            async with redis.pipeline(transaction=False) as pipe:
                for node_id in nodes:
                    pipe.smembers(wire.member_set_key(node_id))
                sets: list[set[bytes]] = await pipe.execute()
            names = {
                fields[0]
                for entries in sets
                for entry in entries
                if (fields := wire.parse_member_entry(entry)) is not None
            }
            rooms = sorted(names)
            if not rooms:
                return {}
            async with redis.pipeline(transaction=False) as pipe:
                for room in rooms:
                    pipe.hkeys(wire.presence_key(room))
                listing = await pipe.execute()
            return {
                room: sorted(_text(n) for n in names)
                for room, names in zip(rooms, listing, strict=True)
                if names
            }

        return await self._calls.call(read)

    # upkeep: on each (re)connection, and every tick

    async def on_connected(self) -> None:
        """The subscription (re)connected: first remove what an earlier process left under
        this node id, renew the lease (re-adding members if it lapsed), remove orphans.
        One connection's upkeep at a time (a Redis Cluster has one per shard)."""
        async with self._upkeep:
            if not self._own_entries_removed:
                await self._sweep_node(self.node_id, force=True)
                self._own_entries_removed = True
            await self._renew()
            await self._remove_orphans()
            self.connected_at = time.monotonic()

    async def leave_all(self) -> None:
        """Remove this node's entries and its lease (a clean stop; nothing is announced)."""
        # From here on nothing puts a member back or takes the lease again (a subscription
        # that reconnects during the stop renews the lease, and would find it gone).
        self._leaving = True
        self._members.clear()
        redis = self._calls.redis
        await self._sweep(self.node_id, force=True)
        await self._calls.run(lambda: redis.delete(*wire.node_keys(self.node_id)))
        await self._calls.run(lambda: redis.srem(wire.NODES_KEY, self.node_id))
        self._members.clear()

    async def lease_loop(self) -> None:
        """Renew the lease and sweep dead nodes every `presence_ttl / 6` seconds."""
        while True:
            await asyncio.sleep(self.tick * random.uniform(0.8, 1.0))
            if not self._calls.available:
                continue
            try:
                again = self._readd_again
                if await self._renew() and again:
                    self._readd_again = False
                    await self._readd_members()
                # Just reconnected: give the other nodes one lease to renew theirs first.
                if time.monotonic() - self.connected_at >= self.lease_ms / 1000:
                    await self._sweep_dead_nodes()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log_event("presence.renew_failed", level=30, node_id=self.node_id, error=repr(exc))

    async def _renew(self) -> bool:
        """Renew this node's lease (named in the nodes set first, so that a sweeper finds
        it); when it had lapsed, put this node's members back. Whether it was still held."""
        if self._leaving:
            return True
        redis = self._calls.redis
        lease = self._calls.script_lease
        await self._calls.run(lambda: redis.sadd(wire.NODES_KEY, self.node_id))
        held = await self._calls.run(
            lambda: lease(
                keys=wire.node_keys(self.node_id), args=[self._lease_token, self.lease_ms]
            )
        )
        if int(held) == 0 and self._members and self._own_entries_removed:
            self._readd_again = True
            await self._readd_members()
        return bool(int(held))

    async def _readd_members(self) -> None:
        log_event(
            "presence.lease_lapsed", level=30, node_id=self.node_id, members=len(self._members)
        )
        for (room, username, connection_id), shared in list(self._members.items()):
            if self._leaving:
                return
            mode = "2" if shared else "0"
            # A member admitted once is not refused for a full room on its way back.
            status, _ = await self._add(room, username, connection_id, mode, upkeep=True)
            if int(status) == 0:
                # Someone took the name while this node was away: the newer one keeps it.
                self._members.pop((room, username, connection_id), None)
                if self.listener is not None:
                    self.listener.on_signal(
                        Signal("replace", room, username, connection_id, self.node_id)
                    )
            elif int(status) == 1:
                await self._announce(Signal("join", room, username, connection_id, self.node_id))

    async def _remove_orphans(self) -> None:
        """Remove (and announce) the entries of members that left while Redis was away."""
        for room, username, connection_id in list(self._orphans):
            removed = await self._remove(room, username, connection_id, upkeep=True)
            self._orphans.discard((room, username, connection_id))
            if removed:
                if self.listener is not None:
                    self.listener.on_members_lost(room, [username], self.node_id)
                await self._announce(
                    Signal("leave", room, username, connection_id, self.node_id, "node_lost")
                )

    async def _sweep_dead_nodes(self) -> None:
        redis = self._calls.redis
        nodes = sorted(
            _text(n) for n in await self._calls.run(lambda: redis.smembers(wire.NODES_KEY))
        )
        others = [n for n in nodes if n != self.node_id]
        if not others:
            return

        async def leases() -> list[Any]:
            async with redis.pipeline(transaction=False) as pipe:
                for node_id in others:
                    pipe.exists(wire.lease_key(node_id))
                return list(await pipe.execute())

        alive = await self._calls.run(leases)
        for node_id, live in zip(others, alive, strict=True):
            if not live:
                await self._sweep_node(node_id)

    async def _sweep_node(self, node_id: str, *, force: bool = False) -> None:
        """Remove a dead node's entries (or, `force`d, this node's own from an earlier
        process); each member this call removed is announced (by the sweep's script) and
        handed to the listener."""
        removed = await self._sweep(node_id, force=force, announce=True)
        if not removed:
            return
        log_event("presence.swept", node_id=self.node_id, lost_node=node_id, members=len(removed))
        by_room: dict[str, list[str]] = {}
        for room, username in removed:
            by_room.setdefault(room, []).append(username)
        if self.listener is not None:
            for room, usernames in by_room.items():
                self.listener.on_members_lost(room, usernames, node_id)

    async def _sweep(
        self, node_id: str, *, force: bool, announce: bool = False
    ) -> list[tuple[str, str]]:
        """Sweep a node's entries in the three steps of scripts.py: claim them (unless the
        lease is live, or `force`), take their tokens out of presence one room slot at a
        time (at most `SWEEP_BATCH` entries per call; with `announce`, the same call
        announces each username that left), forget the finished ones, and take a node that
        is gone off the nodes set. The (room, username) pairs this caller removed."""
        redis = self._calls.redis
        keys = wire.node_keys(node_id)
        claim = self._calls.script_sweep_claim
        entries = await self._calls.run(partial(claim, keys=keys, args=["1" if force else "0"]))
        by_slot: dict[int, list[tuple[bytes, str, str, str]]] = {}
        junk: list[bytes] = []
        for entry in entries:
            fields = wire.parse_member_entry(entry)
            if fields is None:
                junk.append(entry)
            else:
                slot = self._calls.slot(wire.room_slot_key(fields[0]))
                by_slot.setdefault(slot, []).append((entry, *fields))
        removed: list[tuple[str, str]] = []
        done = self._calls.script_sweep_done
        sweep = self._calls.script_sweep_rooms
        for group in by_slot.values():
            for start in range(0, len(group), SWEEP_BATCH):
                batch = group[start : start + SWEEP_BATCH]
                room_keys: list[str] = []
                args: list[Any] = [self._history_ttl_ms, wire.SWEEP_RECORD_MS, self.node_id]
                for _, room, username, connection_id in batch:
                    room_keys += wire.sweep_keys(room)
                    signal = Signal("leave", room, username, "", self.node_id, "node_lost")
                    args += [
                        room,
                        username,
                        wire.presence_value(node_id, connection_id),
                        wire.channel(self._channel_prefix, room),
                        wire.encode_signal(signal) if announce else "",
                    ]
                statuses = await self._calls.run(partial(sweep, keys=room_keys, args=args))
                finished: list[bytes] = []
                for (entry, room, username, _), status in zip(batch, statuses, strict=True):
                    if status == REMOVED_HERE:
                        removed.append((room, username))
                    if status != REMOVED_ELSEWHERE:
                        finished.append(entry)
                await self._calls.run(partial(done, keys=keys, args=finished))
        # Also when nothing was claimed: it is the call that finds a dead node gone.
        gone = await self._calls.run(partial(done, keys=keys, args=junk))
        if int(gone) and not force:
            await self._calls.run(partial(redis.srem, wire.NODES_KEY, node_id))
        return removed

    async def _announce(self, signal: Signal) -> None:
        payload = wire.encode_signal(signal)
        channel = wire.channel(self._channel_prefix, signal.room)
        await self._calls.run(lambda: self._calls.announce(channel, payload))
