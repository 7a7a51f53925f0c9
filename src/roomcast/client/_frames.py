"""Frames the server sends, as typed values (pure: no I/O)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Frame", "FrameHandler", "HistoryPage", "Welcome", "parse_frame", "parse_welcome"]


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame from the server.

    Attributes:
        topic: the frame's topic (`chat`, `presence.join`, `error`, ...).
        payload: the decoded JSON payload.
        room: the room, on room messages and presence frames.
        sender: who sent a room message (`from` on the wire; `$server` for the HTTP API).
        offset: the room message's offset (section 5 of the protocol), or None.
        to: the addressee of a message sent to one member, or None for the whole room.
        id: the frame's `id`, when it has one.
        raw: the whole frame as decoded JSON.
    """

    topic: str
    payload: Any
    room: str | None = None
    sender: str | None = None
    offset: int | None = None
    to: str | None = None
    id: str | int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Welcome:
    """The first frame of a connection: who and where the client is.

    Attributes:
        connection_id: the server's id of this connection.
        username: the member's name in the room.
        room: the room id ("" for a connection opened in no room, protocol v1.1).
        members: the room's members at join time.
        epoch: the room's history incarnation.
        offset: the room's latest offset at join time.
        recovered: after a reconnect, whether every missed message is being replayed;
            None on a first connection.
        rooms: the rooms the connection is in (protocol v1.1; empty from a v1 server).
    """

    connection_id: str
    username: str
    room: str
    members: tuple[str, ...]
    epoch: str
    offset: int
    recovered: bool | None = None
    rooms: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """A page of a room's retained messages: the answer to `room.history` (protocol v1.1).

    Attributes:
        epoch: the room's history incarnation; offsets of another epoch belong to a lost
            history.
        messages: the latest retained messages below the page's `before`, oldest first, each
            as members received it (messages to other members left out); empty when nothing
            older is retained.
    """

    epoch: str
    messages: tuple[Frame, ...]


FrameHandler = Callable[[Frame], Awaitable[None] | None]
"""A function or coroutine function called with each frame of its topic."""


def parse_frame(data: Any) -> Frame:
    """A :class:`Frame` from a decoded server frame.

    Raises:
        ValueError: `data` is not an object with a string topic.
    """
    if not isinstance(data, dict) or not isinstance(data.get("topic"), str):
        raise ValueError("a server frame must be an object with a string topic")
    offset = data.get("offset")
    return Frame(
        topic=data["topic"],
        payload=data.get("payload"),
        room=data.get("room"),
        sender=data.get("from"),
        offset=offset if isinstance(offset, int) and not isinstance(offset, bool) else None,
        to=data.get("to"),
        id=data.get("id"),
        raw=data,
    )


def parse_welcome(payload: Any) -> Welcome:
    """A :class:`Welcome` from the payload of a `welcome` frame.

    Raises:
        ValueError: a required field is missing or has the wrong type.
    """
    try:
        recovered = payload.get("recovered")
        rooms = tuple(str(r) for r in payload.get("rooms", ()))
        if "roomID" not in payload:  # a connection in no room (v1.1)
            return Welcome(
                str(payload["connectionId"]), str(payload["username"]), "", (), "", 0, None, rooms
            )
        return Welcome(
            connection_id=str(payload["connectionId"]),
            username=str(payload["username"]),
            room=str(payload["roomID"]),
            members=tuple(str(m) for m in payload["members"]),
            epoch=str(payload["epoch"]),
            offset=int(payload["offset"]),
            recovered=None if recovered is None else bool(recovered),
            rooms=rooms,
        )
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed welcome frame: {exc!r}") from None
