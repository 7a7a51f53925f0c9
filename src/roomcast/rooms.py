"""Rooms and members held by this node, and the local fan-out of a room's frames (no I/O)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from .codes import CloseCode, ErrorCode
from .connection import Connection, send_later_to_all

__all__ = ["LocalRoom", "LocalRooms", "Member", "MemberHandle"]


class MemberHandle(Protocol):
    """The connection a local member belongs to, as the node acts on it.

    The session implements it; the node knows connections only through it, so the core
    imports one way (node -> rooms, never node -> session).
    """

    @property
    def dispatching(self) -> bool:
        """Whether a frame is being handled or relayed frames still wait for the broker."""

    def membership(self, room: str) -> Member | None:
        """This connection's member of `room`, if it is in that room."""

    async def remove(self, member: Member, reason: str) -> None:
        """Take the connection out of `member`'s room (`kicked`, `replaced`)."""

    async def leave(self, reason: str) -> None:
        """Leave every room and presence (idempotent)."""

    def close(
        self, close_code: CloseCode, error_code: ErrorCode, message: str, *, frame: bool = True
    ) -> None:
        """Close after the queued frames, preceded by an error frame unless `frame` is False."""

    async def wait_idle(self) -> None:
        """Wait until frames being handled and relays in flight are answered."""

    async def connection_closed(self, timeout: float) -> None:
        """Wait (bounded) until the transport has written the close."""


@dataclass(eq=False, slots=True)
class Member:
    """One connection's membership of one room, on this node.

    Attributes:
        username: the member's name, unique in the room across the cluster.
        room: the room id.
        connection_id: a random id naming this connection in logs and frames.
        connection: where frames for this member go.
        claims: what the identity resolver returned (token claims, application data).
        handle: the session this membership belongs to (None for a bare member in tests).
        held: while joining, live frames are held here and sent after the welcome and the
            replay; offset 0 marks a frame without offset (presence).
        last_offset: the room's offset up to which this connection has every message.
    """

    username: str
    room: str
    connection_id: str
    connection: Connection
    claims: dict[str, Any] = field(default_factory=dict)
    handle: MemberHandle | None = None
    held: list[tuple[int, str]] | None = None
    last_offset: int = 0

    def deliver(self, offset: int, frame: str) -> None:
        """Send a room message, or hold it while this member is joining or recovering."""
        if self.held is not None:
            self.held.append((offset, frame))
        elif offset > self.last_offset:
            self.last_offset = offset
            self.connection.send(frame)

    def skip(self, offset: int) -> None:
        """A room message this connection does not get (it sent it with `"echo": false`)."""
        if self.held is None and offset > self.last_offset:
            self.last_offset = offset

    def deliver_ephemeral(self, frame: str) -> None:
        """Send a message of an ephemeral topic; dropped while joining or recovering, so that
        a replay holds stored messages only (it would be stale after the replay anyway)."""
        if self.held is None:
            self.connection.send(frame)

    def notify(self, frame: str) -> None:
        """Send a frame without offset (presence), which may wait a few milliseconds to share
        a write with the next ones (`Connection.send_later`); held like messages while
        joining, so that the welcome frame always comes first."""
        if self.held is not None:
            self.held.append((0, frame))
        else:
            self.connection.send_later(frame)

    def release(self) -> None:
        """End the joining state: send what was held, messages deduplicated by offset."""
        held, self.held = self.held or [], None
        for offset, frame in held:
            if offset == 0:
                self.connection.send_later(frame)
            else:
                self.deliver(offset, frame)


class LocalRoom:
    """The members of one room connected to this node.

    `members` holds each username's first connection here; under the `share` policy a
    user's further connections in the room wait in `shared`, so that the fan-out loop of a
    room where nobody shares stays one plain loop.
    """

    __slots__ = ("members", "room", "shared")

    def __init__(self, room: str) -> None:
        self.room = room
        self.members: dict[str, Member] = {}
        self.shared: dict[str, list[Member]] | None = None

    def fan_out(self, offset: int, frame: str, exclude: str | None = None) -> int:
        """Deliver one encoded room message to every local member but connection `exclude`;
        returns how many got it."""
        if exclude is not None:
            count = 0
            for member in self.all():
                if member.connection_id == exclude:
                    member.skip(offset)
                else:
                    member.deliver(offset, frame)
                    count += 1
            return count
        for member in self.members.values():
            # Member.deliver, inline for its common case: one call less per delivery.
            if member.held is None and offset > member.last_offset:
                member.last_offset = offset
                member.connection.send(frame)
            else:
                member.deliver(offset, frame)
        count = len(self.members)
        if self.shared:
            for more in self.shared.values():
                for member in more:
                    member.deliver(offset, frame)
                count += len(more)
        return count

    def fan_out_ephemeral(self, frame: str, to: str | None, exclude: str | None) -> int:
        """Deliver a message of an ephemeral topic to the room (or to member `to`) but
        connection `exclude`; returns how many got it."""
        count = 0
        for member in self.all() if to is None else self.all_of(to):
            if member.connection_id != exclude:
                member.deliver_ephemeral(frame)
                count += 1
        return count

    def broadcast(self, frame: str, *, exclude: str | None = None) -> int:
        """Send a frame without offset (presence) to every local member but `exclude`."""
        count = 0
        ready: list[Connection] = []
        for member in self.members.values():
            # Member.notify, inline: a join is announced to every member of the room.
            if member.username == exclude:
                continue
            if member.held is None:
                ready.append(member.connection)
            else:
                member.held.append((0, frame))
            count += 1
        if ready:
            send_later_to_all(ready, frame)
        if self.shared:
            for username, more in self.shared.items():
                if username != exclude:
                    for member in more:
                        member.notify(frame)
                    count += len(more)
        return count

    def all_of(self, username: str) -> list[Member]:
        """Every local connection of `username` in this room (several under `share`)."""
        first = self.members.get(username)
        if first is None:
            return []
        more = self.shared.get(username) if self.shared else None
        return [first, *more] if more else [first]

    def all(self) -> list[Member]:
        """Every local member, a user's shared connections included."""
        found = list(self.members.values())
        if self.shared:
            for more in self.shared.values():
                found.extend(more)
        return found

    def add(self, member: Member, *, share: bool = False) -> None:
        """Add a member; with `share`, beside a connection of the same user already here,
        else in its place (the replaced one is closed by its own signal)."""
        first = self.members.get(member.username)
        if first is None or first is member or not share:
            self.members[member.username] = member
            return
        if self.shared is None:
            self.shared = {}
        more = self.shared.setdefault(member.username, [])
        if member not in more:
            more.append(member)

    def remove(self, member: Member) -> bool:
        """Remove this exact member; returns True when it was here."""
        username = member.username
        more = self.shared.get(username) if self.shared else None
        if self.members.get(username) is member:
            if more:
                self.members[username] = more.pop(0)
            else:
                del self.members[username]
        elif more is not None and member in more:
            more.remove(member)
        else:
            return False
        if more is not None and not more and self.shared is not None:
            del self.shared[username]
            if not self.shared:
                self.shared = None
        return True


class LocalRooms:
    """Every room with at least one member on this node; a room exists while it has one."""

    __slots__ = ("_rooms",)

    def __init__(self) -> None:
        self._rooms: dict[str, LocalRoom] = {}

    def get(self, room: str) -> LocalRoom | None:
        """The local room, or `None` when no member of it is on this node."""
        return self._rooms.get(room)

    def add(self, member: Member, *, share: bool = False) -> bool:
        """Add a member (see :meth:`LocalRoom.add`); True when this made the room exist here."""
        local = self._rooms.get(member.room)
        created = local is None
        if local is None:
            local = self._rooms[member.room] = LocalRoom(member.room)
        local.add(member, share=share)
        return created

    def remove(self, member: Member) -> bool:
        """Remove this exact member; returns True when the room is now gone from this node."""
        local = self._rooms.get(member.room)
        if local is None or not local.remove(member):
            return False
        if not local.members:
            del self._rooms[member.room]
            return True
        return False

    def find(self, room: str, username: str) -> Member | None:
        """The local member `username` of `room`, if connected here."""
        local = self._rooms.get(room)
        return None if local is None else local.members.get(username)

    def __iter__(self) -> Iterator[LocalRoom]:
        return iter(list(self._rooms.values()))

    def __len__(self) -> int:
        return len(self._rooms)

    def member_count(self) -> int:
        """Members over every local room."""
        return sum(len(r.all()) for r in self._rooms.values())
