"""The wire codec: parse and validate client frames, encode server frames.

Pure functions only: no I/O, no asyncio, so every rule of docs/protocol.md is testable offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NewType

import orjson

from .codes import ErrorCode
from .errors import FrameError

__all__ = [
    "BUILTIN_TOPICS",
    "MAX_NAME_LENGTH",
    "MAX_TOPIC_LENGTH",
    "SERVER_SENDER",
    "ClientFrame",
    "FrameId",
    "RoomID",
    "Topic",
    "Username",
    "ack_frame",
    "dumps",
    "error_frame",
    "message_frame",
    "message_prefix",
    "parse_client_frame",
    "parse_offset",
    "presence_frame",
    "server_frame",
    "validate_name",
    "validate_topic",
    "welcome_frame",
]

RoomID = NewType("RoomID", str)
Username = NewType("Username", str)
Topic = NewType("Topic", str)
FrameId = str | int

MAX_NAME_LENGTH = 128
MAX_TOPIC_LENGTH = 128
SERVER_SENDER = "$server"
"""The `from` of messages sent through the HTTP API or a command."""

BUILTIN_TOPICS = frozenset({"ping", "presence", "auth.refresh"})
"""Client topics the server answers itself; never relayed."""


def dumps(value: Any) -> str:
    """Encode a JSON value to compact text."""
    return orjson.dumps(value).decode()


def validate_name(value: object, what: str) -> str:
    """Check a username or room id: 1-128 printable characters, no whitespace.

    Raises:
        FrameError: `invalid_frame`, naming `what` and the rule it breaks.
    """
    if not isinstance(value, str) or not value:
        raise FrameError(ErrorCode.INVALID_FRAME, f"{what} is required")
    if len(value) > MAX_NAME_LENGTH:
        raise FrameError(
            ErrorCode.INVALID_FRAME, f"{what} is longer than {MAX_NAME_LENGTH} characters"
        )
    if not value.isprintable() or any(c.isspace() for c in value):
        raise FrameError(
            ErrorCode.INVALID_FRAME,
            f"{what} must be printable characters without whitespace",
        )
    return value


def validate_topic(value: object) -> Topic:
    """Check a topic a client (or the HTTP API) may publish to.

    Raises:
        FrameError: `invalid_frame` for a missing, empty, long, or `$`-reserved topic.
    """
    if not isinstance(value, str):
        raise FrameError(ErrorCode.INVALID_FRAME, "topic must be a string")
    if not 1 <= len(value) <= MAX_TOPIC_LENGTH:
        raise FrameError(ErrorCode.INVALID_FRAME, f"topic must be 1-{MAX_TOPIC_LENGTH} characters")
    if value.startswith("$"):
        raise FrameError(ErrorCode.INVALID_FRAME, "topics starting with '$' are reserved")
    return Topic(value)


def parse_offset(value: str | None, what: str = "since") -> int | None:
    """Parse a non-negative integer query parameter; `None` when absent.

    Raises:
        FrameError: `invalid_frame` when it is not a non-negative integer.
    """
    if value is None:
        return None
    if not value.isdigit() or len(value) > 19:
        raise FrameError(ErrorCode.INVALID_FRAME, f"{what} must be a non-negative integer")
    return int(value)


@dataclass(frozen=True, slots=True)
class ClientFrame:
    """A validated client frame."""

    topic: Topic
    payload: Any
    id: FrameId | None = None
    to: Username | None = None


def parse_client_frame(text: str | bytes) -> ClientFrame:
    """Parse and validate one client frame.

    Raises:
        FrameError: `invalid_json` when the text is not JSON; `invalid_frame` when it is not an
            object with a valid topic, a non-null payload, and well-typed `id` and `to`. The
            error carries the frame's `id` whenever that could be read.
    """
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise FrameError(ErrorCode.INVALID_JSON, "frame is not valid JSON") from None
    if not isinstance(data, dict):
        raise FrameError(ErrorCode.INVALID_FRAME, "frame must be a JSON object")
    frame_id = data.get("id")
    if frame_id is not None and (isinstance(frame_id, bool) or not isinstance(frame_id, str | int)):
        raise FrameError(ErrorCode.INVALID_FRAME, "id must be a string or an integer")
    try:
        topic = validate_topic(data.get("topic"))
        payload = data.get("payload")
        if payload is None:
            raise FrameError(ErrorCode.INVALID_FRAME, "payload is required and must not be null")
        to = data.get("to")
        if to is not None:
            to = Username(validate_name(to, "to"))
    except FrameError as exc:
        exc.frame_id = frame_id
        raise
    return ClientFrame(topic=topic, payload=payload, id=frame_id, to=to)


def server_frame(topic: str, payload: Any, **fields: Any) -> str:
    """Encode a server frame `{"topic", "payload", **fields}`."""
    return dumps({"topic": topic, "payload": payload, **fields})


def message_prefix(topic: str, payload: Any, room: str, sender: str, to: str | None = None) -> str:
    """Encode a room message up to its offset: the frame is `prefix + str(offset) + "}"`.

    The broker assigns the offset; encoding everything else once, here, lets every node and
    every member receive the same bytes without re-encoding.
    """
    frame: dict[str, Any] = {"topic": topic, "payload": payload, "room": room, "from": sender}
    if to is not None:
        frame["to"] = to
    return dumps(frame)[:-1] + ',"offset":'


def message_frame(prefix: str, offset: int) -> str:
    """Complete a frame made by :func:`message_prefix` with its offset."""
    return f"{prefix}{offset}}}"


def ack_frame(frame_id: FrameId, offset: int | None = None) -> str:
    """The `ack` for frame `frame_id`, with the offset of the message it published, if any."""
    payload: dict[str, Any] = {"id": frame_id}
    if offset is not None:
        payload["offset"] = offset
    return server_frame("ack", payload)


def error_frame(code: ErrorCode, message: str, frame_id: FrameId | None = None) -> str:
    """An `error` frame; it carries `id` when it answers a frame that had one."""
    payload: dict[str, Any] = {"code": code.value, "message": message}
    if frame_id is not None:
        payload["id"] = frame_id
    return server_frame("error", payload)


def presence_frame(kind: str, room: str, username: str) -> str:
    """A `presence.join` or `presence.leave` frame (`kind` is "join" or "leave")."""
    return server_frame(f"presence.{kind}", {"username": username}, room=room)


def welcome_frame(
    *,
    connection_id: str,
    username: str,
    room: str,
    members: list[str],
    epoch: str,
    offset: int,
    recovered: bool | None,
) -> str:
    """The first frame of every accepted connection."""
    payload: dict[str, Any] = {
        "connectionId": connection_id,
        "username": username,
        "roomID": room,
        "members": members,
        "epoch": epoch,
        "offset": offset,
    }
    if recovered is not None:
        payload["recovered"] = recovered
    return server_frame("welcome", payload)
