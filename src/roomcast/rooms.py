"""Rooms and members held by this node, and the local fan-out of a room's frames (no I/O)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .connection import Connection

__all__ = ["LocalRoom", "LocalRooms", "Member"]


@dataclass(eq=False, slots=True)
class Member:
    """One connection's membership of one room, on this node.

    Attributes:
        username: the member's name, unique in the room across the cluster.
        room: the room id.
        connection_id: a random id naming this connection in logs and frames.
        connection: where frames for this member go.
        claims: what the identity resolver returned (token claims, application data).
        held: while joining, live frames are held here and sent after the welcome and the
            replay; offset 0 marks a frame without offset (presence).
    """

    username: str
    room: str
    connection_id: str
    connection: Connection
    claims: dict[str, Any] = field(default_factory=dict)
    held: list[tuple[int, str]] | None = None
    last_offset: int = 0

    def deliver(self, offset: int, frame: str) -> None:
        """Send a room message, or hold it while this member is joining or recovering."""
        if self.held is not None:
            self.held.append((offset, frame))
        elif offset > self.last_offset:
            self.last_offset = offset
            self.connection.send(frame)

    def notify(self, frame: str) -> None:
        """Send a frame without offset (presence); held like messages while joining, so that
        the welcome frame always comes first."""
        if self.held is not None:
            self.held.append((0, frame))
        else:
            self.connection.send(frame)

    def release(self) -> None:
        """End the joining state: send what was held, messages deduplicated by offset."""
        held, self.held = self.held or [], None
        for offset, frame in held:
            if offset == 0:
                self.connection.send(frame)
            else:
                self.deliver(offset, frame)


class LocalRoom:
    """The members of one room connected to this node."""

    __slots__ = ("members", "room")

    def __init__(self, room: str) -> None:
        self.room = room
        self.members: dict[str, Member] = {}

    def fan_out(self, offset: int, frame: str) -> int:
        """Deliver one encoded room message to every local member; returns how many."""
        for member in self.members.values():
            member.deliver(offset, frame)
        return len(self.members)

    def broadcast(self, frame: str, *, exclude: str | None = None) -> int:
        """Send a frame without offset (presence) to every local member but `exclude`."""
        count = 0
        for username, member in self.members.items():
            if username != exclude:
                member.notify(frame)
                count += 1
        return count


class LocalRooms:
    """Every room with at least one member on this node; a room exists while it has one."""

    __slots__ = ("_rooms",)

    def __init__(self) -> None:
        self._rooms: dict[str, LocalRoom] = {}

    def get(self, room: str) -> LocalRoom | None:
        """The local room, or `None` when no member of it is on this node."""
        return self._rooms.get(room)

    def add(self, member: Member) -> bool:
        """Add a member; returns True when this made the room exist on this node."""
        local = self._rooms.get(member.room)
        created = local is None
        if local is None:
            local = self._rooms[member.room] = LocalRoom(member.room)
        local.members[member.username] = member
        return created

    def remove(self, member: Member) -> bool:
        """Remove this exact member; returns True when the room is now gone from this node."""
        local = self._rooms.get(member.room)
        if local is None or local.members.get(member.username) is not member:
            return False
        del local.members[member.username]
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
        return sum(len(r.members) for r in self._rooms.values())
