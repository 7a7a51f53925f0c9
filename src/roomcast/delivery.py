"""Where broker traffic arrives on a node: room messages in offset order (gap check and
repair), presence signals, close orders, a dead node's members, the broker's availability.

The node hands a :class:`Delivery` to its broker as the `BrokerListener`; from here a room
message goes to the local room's fan-out (rooms.py) and a close order to the member's handle.

Three cursors follow a room's offsets, each for its own reason:

- :class:`RoomCursor` (here, one per subscribed room): the last offset this node delivered;
  a live offset that is not the next one means messages were lost on the way (a broker
  reconnect), and is repaired from history before anything later goes out. It is the one that
  decides what this node delivers, in which order.
- `Member.last_offset` (rooms.py, one per membership): what that connection has; it drops
  offsets it already got from a replay (a join with `since` or `backlog`), so that a message
  is never sent twice to one connection.
- the Redis broker's own confirmation cursor (brokers/redis/publishing.py): how far this
  node's subscription has read, so that a publish returns after the sender's own copy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .brokers import Broker, HistoryPage, Publication, Signal
from .codes import CloseCode, ErrorCode
from .events import EventBus, MemberLeft
from .log import log_event
from .metrics import Metrics
from .protocol import presence_frame
from .room_classes import RoomClasses
from .rooms import LocalRoom, LocalRooms, MemberHandle

__all__ = ["Delivery", "RoomCursor"]

_REPAIR_ROUNDS = 10
"""History reads one repair may take before the room's members are told to reconnect."""


@dataclass(slots=True)
class RoomCursor:
    """How far this node has delivered a room: a live offset that is not `offset + 1`
    (a message lost across a broker reconnect) is noticed and repaired from history."""

    epoch: str
    offset: int
    pending: list[Publication] | None = None
    """Live messages that arrived while a gap is being repaired (None when not repairing)."""


class Delivery:
    """The node's `BrokerListener`: delivers what the broker brings to local members.

    Args:
        node_id: the node's id (logs).
        broker: the node's broker (history reads for repairs).
        rooms: the node's local rooms (read only: the node writes them).
        connections: the node's open connections by id (read only).
        metrics: the node's counters.
        events: the node's event bus (`MemberLeft` of a dead node's members).
        spawn: runs a coroutine in the background on the node.
        classes: the room classes (a class may send no presence frames).
    """

    def __init__(
        self,
        node_id: str,
        broker: Broker,
        rooms: LocalRooms,
        connections: Mapping[str, MemberHandle],
        metrics: Metrics,
        events: EventBus,
        spawn: Callable[[Any], None],
        classes: RoomClasses | None = None,
    ) -> None:
        self.node_id = node_id
        self.broker = broker
        self.rooms = rooms
        self.connections = connections
        self.metrics = metrics
        self.events = events
        self.spawn = spawn
        self.classes = RoomClasses() if classes is None else classes
        self._positions: dict[str, RoomCursor] = {}
        self.broker_up = asyncio.Event()
        """Set while the broker says it is available (`on_broker_state`)."""

    def forget(self, room: str) -> None:
        """The node no longer serves `room`: drop its cursor."""
        self._positions.pop(room, None)

    async def track(self, room: str) -> None:
        """Learn where a newly subscribed room stands, so that a gap after it is noticed."""
        if room not in self._positions:
            page = await self.broker.history(room, None, 0)
            self._positions.setdefault(room, RoomCursor(page.epoch, page.offset))

    def on_publication(self, publication: Publication) -> None:
        """Deliver a room message to the local members it is for, in offset order; a gap
        (or another epoch) is repaired from history before anything after it is delivered."""
        local = self.rooms.get(publication.room)
        if local is None:
            return
        if publication.ephemeral:
            # Outside the room's order: no gap to notice, nothing to repair.
            self._deliver(publication, local)
            return
        position = self._positions.get(publication.room)
        if position is not None and publication.epoch:
            if position.pending is not None:
                position.pending.append(publication)
                return
            if publication.epoch != position.epoch or publication.offset > position.offset + 1:
                position.pending = [publication]
                self.spawn(self._repair(publication.room, position))
                return
            if publication.offset <= position.offset:
                return
            position.offset = publication.offset
        self._deliver(publication, local)

    def _deliver(self, publication: Publication, local: LocalRoom | None = None) -> None:
        """Deliver to the local members it is for (`local`: the room, when the caller has it)."""
        if local is None:
            local = self.rooms.get(publication.room)
            if local is None:
                return
        exclude = publication.exclude
        if publication.ephemeral:
            sent = local.fan_out_ephemeral(publication.frame, publication.to, exclude)
            self.metrics.frames_out.inc(sent)
        elif publication.to is None:
            sent = local.fan_out(publication.offset, publication.frame, exclude)
            self.metrics.frames_out.inc(sent)
        else:
            for member in local.all_of(publication.to):
                if member.connection_id == exclude:
                    member.skip(publication.offset)
                else:
                    member.deliver(publication.offset, publication.frame)
                    self.metrics.frames_out.inc()

    def on_signal(self, signal: Signal) -> None:
        """Apply a presence change or a close order to local members."""
        local = self.rooms.get(signal.room)
        if local is None:
            return
        if signal.kind in ("join", "leave"):
            if not self.classes.resolve(signal.room).announces:
                return
            frame = presence_frame(signal.kind, signal.room, signal.username)
            self.metrics.frames_out.inc(local.broadcast(frame, exclude=signal.username))
            return
        if signal.kind == "replace":
            # The newer connection already took the username's place in the local room, so the
            # replaced one is found by its connection id, not by its name.
            handle = self.connections.get(signal.connection_id)
            replaced = None if handle is None else handle.membership(signal.room)
            if replaced is not None and replaced.username == signal.username and handle:
                self.spawn(handle.remove(replaced, "replaced"))
            return
        if signal.kind == "kick":
            for member in local.all_of(signal.username):
                if member.handle is not None:
                    self.spawn(member.handle.remove(member, "kicked"))

    def on_members_lost(self, room: str, usernames: list[str], node_id: str) -> None:
        """Announce the members of a dead node as gone (this node was chosen to do it)."""
        local = self.rooms.get(room)
        cls = self.classes.resolve(room)
        if local is not None and not cls.announces:
            local = None
        for username in usernames:
            if local is not None:
                local.broadcast(presence_frame("leave", room, username), exclude=username)
            if cls.presence:  # (a room without presence keeps its members unseen)
                self.events.publish(MemberLeft(room, username, "", node_id, "node_lost"))
            log_event("presence.lost", room=room, username=username, node_id=node_id)

    def on_broker_state(self, available: bool, rooms: Callable[[str], bool] | None = None) -> None:
        """Log broker availability changes; once back, repair every room from history (what
        was published while this node could not hear it). With `rooms`, one server of several
        came back (it logged that itself): only the rooms for which `rooms(room)` holds."""
        if rooms is not None:
            if available:
                self._repair_all(rooms)
            return
        if available:
            self.broker_up.set()
        else:
            self.broker_up.clear()
        log_event(
            "broker.available" if available else "broker.unavailable",
            level=20 if available else 40,
            node_id=self.node_id,
        )
        if available:
            self._repair_all(lambda room: True)

    def _repair_all(self, rooms: Callable[[str], bool]) -> None:
        """Repair every room for which `rooms(room)` holds (and not being repaired now)."""
        for room, position in self._positions.items():
            if position.pending is None and rooms(room):
                position.pending = []
                self.spawn(self._repair(room, position))

    async def _repair(self, room: str, position: RoomCursor) -> None:
        """Deliver the messages after `position` from history, then the live ones held
        meanwhile; when history cannot fill the gap, the room's members must reconnect."""
        log_event("room.repair", room=room, node_id=self.node_id, after=position.offset)
        try:
            page: HistoryPage | None = None
            for _ in range(_REPAIR_ROUNDS):
                page = await self.broker.history(room, position.offset)
                if self._positions.get(room) is not position:
                    return
                # An offset behind this node's went back: a replica promoted before it had
                # the last messages (or the store was restored); those offsets come again.
                if (
                    page.epoch != position.epoch
                    or not page.complete
                    or page.offset < position.offset
                ):
                    self._history_lost(room, page)
                    return
                for publication in page.publications:
                    if publication.offset == position.offset + 1:
                        position.offset = publication.offset
                        self._deliver(publication)
                pending = position.pending or []
                for index, publication in enumerate(pending):
                    if publication.offset <= position.offset and publication.epoch == (
                        position.epoch
                    ):
                        continue
                    if (
                        publication.epoch != position.epoch
                        or publication.offset != position.offset + 1
                    ):
                        position.pending = pending[index:]
                        break
                    position.offset = publication.offset
                    self._deliver(publication)
                else:
                    position.pending = None
                    return
            if page is not None and self._positions.get(room) is position:
                self._history_lost(room, page)  # the gap keeps moving: start the room afresh
        except Exception:
            # Unavailable again: the reconnect (or the next live message) repairs once more.
            position.pending = None
            log_event("room.repair_failed", level=30, room=room, exc_info=True)

    def _history_lost(self, room: str, page: HistoryPage) -> None:
        """The room's history is gone (another epoch, or trimmed past the gap): its local
        members cannot get a gap-free order, so they are told to reconnect and resume."""
        log_event("room.history_lost", level=30, room=room, node_id=self.node_id, epoch=page.epoch)
        self._positions[room] = RoomCursor(page.epoch, page.offset)
        local = self.rooms.get(room)
        for member in local.all() if local is not None else ():
            handle = member.handle
            if handle is not None:
                handle.close(
                    CloseCode.BROKER_UNAVAILABLE,
                    ErrorCode.UNAVAILABLE,
                    "the room's history was lost: reconnect to resume",
                )
                self.spawn(handle.leave("history_lost"))
