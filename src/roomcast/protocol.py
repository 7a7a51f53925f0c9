"""The wire codec: parse and validate client frames, encode server frames.

Pure functions only: no I/O, no asyncio, so every rule of docs/protocol.md is testable offline.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, NewType

import orjson

from .codes import ErrorCode
from .errors import FrameError

__all__ = [
    "BUILTIN_TOPICS",
    "DEFAULT_HISTORY_LIMIT",
    "IDEMPOTENCY_WINDOW",
    "MAX_CLOSE_REASON_BYTES",
    "MAX_HISTORY_LIMIT",
    "MAX_JSON_DEPTH",
    "MAX_KEY_LENGTH",
    "MAX_NAME_LENGTH",
    "MAX_TOPIC_LENGTH",
    "ROOM_TOPIC_PREFIX",
    "SERVER_SENDER",
    "ClientFrame",
    "FrameId",
    "HistoryRequest",
    "JoinRequest",
    "RoomID",
    "Topic",
    "Username",
    "ack_frame",
    "check_limits",
    "close_reason",
    "dumps",
    "ephemeral_frame",
    "error_frame",
    "history_frame",
    "is_builtin",
    "joined_frame",
    "left_frame",
    "loads",
    "message_frame",
    "message_prefix",
    "parse_client_frame",
    "parse_history",
    "parse_join",
    "parse_offset",
    "parse_room_payload",
    "presence_frame",
    "server_frame",
    "validate_key",
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
MAX_KEY_LENGTH = 128
IDEMPOTENCY_WINDOW = 300.0
"""Seconds during which a second publish to a room with the same idempotency key is answered
with the first one's offset instead of being published (docs/protocol.md, section 10)."""
SERVER_SENDER = "$server"
"""The `from` of messages sent through the HTTP API or a command."""

BUILTIN_TOPICS = frozenset(
    {"ping", "presence", "auth.refresh", "room.join", "room.leave", "room.history"}
)
"""Client topics the server answers itself; never relayed (see :func:`is_builtin`)."""
ROOM_TOPIC_PREFIX = "room."
"""Every topic starting with it is built-in (v1.1): `room.join`, `room.leave`, and those to
come; the server answers `unknown_topic` to the ones it does not know, and never relays them."""


def is_builtin(topic: str) -> bool:
    """Whether the server answers `topic` itself (never relayed, never given to handlers)."""
    return topic in BUILTIN_TOPICS or topic.startswith(ROOM_TOPIC_PREFIX)


MAX_JSON_DEPTH = 128
"""Deepest nesting of arrays and objects in a client frame or HTTP body (the frame itself is
level 1); deeper JSON is refused with `invalid_frame`, since it could not be re-encoded."""

MAX_CLOSE_REASON_BYTES = 123
"""The longest close reason a WebSocket close frame can carry, in UTF-8 bytes."""

_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1
# A run of 19 digits, which every integer beyond 64 bits has (as do a few within them, and a
# digit run inside a string: the exact check below tells them apart). Only a text that
# matches pays for that check; one plain character class searches several times faster than
# the exact alternatives (`-` and 19 digits, or 20 digits).
_LONG_DIGITS = re.compile(r"[0-9]{19}")
_LONG_DIGITS_BYTES = re.compile(rb"[0-9]{19}")
_FRAME_KEYS = frozenset({"topic", "payload", "id", "to", "room", "echo"})
_FLAT = (str, int, bool)


def dumps(value: Any) -> str:
    """Encode a JSON value to compact text."""
    return orjson.dumps(value).decode()


def loads(text: str | bytes, what: str = "frame") -> Any:
    """Parse JSON as the protocol accepts it.

    Integers must fit in 64 bits (-2**63 to 2**64-1): larger ones would be relayed rounded to
    floats. Nesting is limited to :data:`MAX_JSON_DEPTH` levels.

    Raises:
        FrameError: `invalid_json` when `text` is not JSON; `invalid_frame` when it is nested
            too deep or holds an integer beyond 64 bits.
    """
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise FrameError(ErrorCode.INVALID_JSON, f"{what} is not valid JSON") from None
    check_limits(text, data, what)
    return data


def check_limits(text: str | bytes, data: Any, what: str = "frame") -> None:
    """Check the JSON `data` parsed from `text` against the limits of :func:`loads`.

    Raises:
        FrameError: `invalid_frame` when it is nested too deep or holds an integer beyond 64
            bits.
    """
    if isinstance(text, str):
        opens = text.count("[") + text.count("{")
        long_digits = _LONG_DIGITS.search(text) is not None
    else:
        opens = text.count(b"[") + text.count(b"{")
        long_digits = _LONG_DIGITS_BYTES.search(text) is not None
    if opens > MAX_JSON_DEPTH and _depth(data) > MAX_JSON_DEPTH:
        raise FrameError(
            ErrorCode.INVALID_FRAME, f"{what} is nested deeper than {MAX_JSON_DEPTH} levels"
        )
    if long_digits:
        try:
            json.loads(text, parse_int=_int64)
        except ValueError:
            raise FrameError(
                ErrorCode.INVALID_FRAME, f"{what} holds an integer beyond 64 bits"
            ) from None


def _int64(digits: str) -> int:
    value = int(digits)
    if not _INT_MIN <= value <= _INT_MAX:
        raise ValueError(digits)
    return value


def _depth(value: Any) -> int:
    """The nesting depth of a parsed JSON value (a scalar is 0)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest


def close_reason(message: str) -> str:
    """`message` cut to what a close frame can carry (123 UTF-8 bytes, whole characters)."""
    data = message.encode()
    if len(data) <= MAX_CLOSE_REASON_BYTES:
        return message
    return data[:MAX_CLOSE_REASON_BYTES].decode(errors="ignore")


def validate_name(value: object, what: str) -> str:
    """Check a username or room id: 1-128 printable characters, no whitespace.

    Raises:
        FrameError: `invalid_frame`, naming `what` and the rule it breaks.
    """
    if not isinstance(value, str) or not value:
        wrong = value is not None and not isinstance(value, str)
        raise FrameError(
            ErrorCode.INVALID_FRAME, f"{what} must be a string" if wrong else f"{what} is required"
        )
    if len(value) > MAX_NAME_LENGTH:
        raise FrameError(
            ErrorCode.INVALID_FRAME, f"{what} is longer than {MAX_NAME_LENGTH} characters"
        )
    # Every whitespace character but the space is unprintable (Unicode's "Separator" and
    # "Other" categories): one scan instead of one per character.
    if not value.isprintable() or " " in value:
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


def validate_key(value: object, what: str = "key") -> str:
    """Check an idempotency key (a frame's `key`, the `Idempotency-Key` header): a string of
    1-128 characters.

    Raises:
        FrameError: `invalid_frame`, naming `what` and the rule.
    """
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_KEY_LENGTH:
        raise FrameError(
            ErrorCode.INVALID_FRAME, f"{what} must be a string of 1-{MAX_KEY_LENGTH} characters"
        )
    return value


def parse_offset(value: str | None, what: str = "since") -> int | None:
    """Parse a non-negative integer query parameter; `None` when absent.

    Raises:
        FrameError: `invalid_frame` when it is not a non-negative integer.
    """
    if value is None:
        return None
    if not value.isascii() or not value.isdigit():
        raise FrameError(ErrorCode.INVALID_FRAME, f"{what} must be a non-negative integer")
    if len(value) > 19 or int(value) >= 2**63:
        raise FrameError(ErrorCode.INVALID_FRAME, f"{what} must be below 2^63")
    return int(value)


@dataclass(slots=True)
class ClientFrame:
    """A validated client frame (read-only by convention: not frozen, because a frozen
    dataclass's constructor costs a call per field, and one is built per frame)."""

    topic: Topic
    payload: Any
    id: FrameId | None = None
    to: Username | None = None
    room: RoomID | None = None
    """The room the frame is for; None for the connection's first room."""
    echo: bool = True
    """False (`"echo": false`): the message is not delivered back to the sending connection."""
    key: str | None = None
    """The idempotency key: a second publish with it within :data:`IDEMPOTENCY_WINDOW`
    seconds is not published again."""


def parse_client_frame(text: str | bytes) -> ClientFrame:
    """Parse and validate one client frame.

    Raises:
        FrameError: `invalid_json` when the text is not JSON; `invalid_frame` when it is not an
            object with a valid topic, a non-null payload, and well-typed `id`, `to`, `room`,
            `echo` and `key`. The error carries the frame's `id` whenever that could be read.
    """
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise FrameError(ErrorCode.INVALID_JSON, "frame is not valid JSON") from None
    if not isinstance(data, dict):
        raise FrameError(ErrorCode.INVALID_FRAME, "frame must be a JSON object")
    payload = data.get("payload")
    topic_value = data.get("topic")
    if len(data) == 2 and type(payload) in _FLAT and type(topic_value) is str:
        # The common frame: exactly a topic and a string, integer or boolean payload, which
        # is within the JSON limits and has nothing else to check.
        return ClientFrame(validate_topic(topic_value), payload)
    frame_id = data.get("id")
    if frame_id is not None and (isinstance(frame_id, bool) or not isinstance(frame_id, str | int)):
        raise FrameError(ErrorCode.INVALID_FRAME, "id must be a string or an integer")
    try:
        # A frame of known fields, each a string, a boolean or an integer (orjson gives a
        # float for an integer beyond 64 bits), is within the limits: no need to look.
        if not (
            type(payload) in _FLAT
            and type(topic_value) is str
            and data.keys() <= _FRAME_KEYS
            and all(type(v) in _FLAT for v in data.values())
        ):
            check_limits(text, data)
        topic = validate_topic(topic_value)
        if payload is None:
            raise FrameError(ErrorCode.INVALID_FRAME, "payload is required and must not be null")
        to = data.get("to")
        if to is not None:
            to = Username(validate_name(to, "to"))
        room = data.get("room")
        if room is not None:
            room = RoomID(validate_name(room, "room"))
        echo = data.get("echo", True)
        if not isinstance(echo, bool):
            raise FrameError(ErrorCode.INVALID_FRAME, "echo must be true or false")
        key = data.get("key")
        if key is not None:
            key = validate_key(key)
    except FrameError as exc:
        exc.frame_id = frame_id
        raise
    return ClientFrame(topic, payload, frame_id, to, room, echo, key)


@dataclass(frozen=True, slots=True)
class JoinRequest:
    """A validated `room.join` payload (docs/protocol.md, section 7)."""

    room: RoomID
    since: int | None = None
    epoch: str | None = None
    backlog: int | None = None


def _bad_request(message: str) -> FrameError:
    return FrameError(ErrorCode.BAD_REQUEST, message)


def _count(value: object, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise _bad_request(f"{what} must be a non-negative integer")
    return value


def parse_join(payload: object) -> JoinRequest:
    """Validate a `room.join` payload `{"roomID", "since"?, "epoch"?, "backlog"?}`.

    Raises:
        FrameError: `bad_request` for a missing or invalid roomID, since, epoch or backlog,
            `since` without `epoch`, or `since` together with `backlog`.
    """
    if not isinstance(payload, dict):
        raise _bad_request('room.join needs a payload {"roomID": "..."}')
    room = parse_room_payload(payload)
    if room is None:
        raise _bad_request("roomID is required")
    since = _count(payload.get("since"), "since")
    backlog = _count(payload.get("backlog"), "backlog")
    epoch = payload.get("epoch")
    if epoch is not None and (not isinstance(epoch, str) or not 1 <= len(epoch) <= 128):
        raise _bad_request("epoch must be a string of 1-128 characters")
    if since is not None and epoch is None:
        raise _bad_request("since needs epoch")
    if since is not None and backlog is not None:
        raise _bad_request("since and backlog cannot be used together")
    return JoinRequest(room, since, epoch if since is not None else None, backlog)


DEFAULT_HISTORY_LIMIT = 50
"""Messages a `room.history` answer holds at most when the request gives no `limit`."""
MAX_HISTORY_LIMIT = 100
"""The largest `limit` a `room.history` request may ask for."""


@dataclass(frozen=True, slots=True)
class HistoryRequest:
    """A validated `room.history` payload (docs/protocol.md, section 10)."""

    room: RoomID | None
    """None for the frame's room (or the connection's first room)."""
    before: int | None
    """Only messages with a lower offset; None for the room's latest offset + 1."""
    limit: int = DEFAULT_HISTORY_LIMIT


def parse_history(payload: object) -> HistoryRequest:
    """Validate a `room.history` payload `{"roomID"?, "before"?, "limit"?}`.

    Raises:
        FrameError: `bad_request` when the payload is not an object, or for an invalid
            roomID, a `before` that is not a non-negative integer, or a `limit` that is not
            an integer from 1 to :data:`MAX_HISTORY_LIMIT`.
    """
    if not isinstance(payload, dict):
        raise _bad_request('room.history needs a payload {"roomID"?, "before"?, "limit"?}')
    room = parse_room_payload(payload)
    before = _count(payload.get("before"), "before")
    limit = payload.get("limit")
    if limit is None:
        limit = DEFAULT_HISTORY_LIMIT
    elif (
        not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_HISTORY_LIMIT
    ):
        raise _bad_request(f"limit must be an integer from 1 to {MAX_HISTORY_LIMIT}")
    return HistoryRequest(room, before, limit)


def parse_room_payload(payload: object) -> RoomID | None:
    """The `roomID` of a `room.leave` or `presence` payload; None when it names none.

    Raises:
        FrameError: `bad_request` when `roomID` is present but not a valid room id.
    """
    if not isinstance(payload, dict) or payload.get("roomID") is None:
        return None
    try:
        return RoomID(validate_name(payload["roomID"], "roomID"))
    except FrameError as exc:
        raise _bad_request(exc.message) from None


def server_frame(topic: str, payload: Any, **fields: Any) -> str:
    """Encode a server frame `{"topic", "payload", **fields}`."""
    return dumps({"topic": topic, "payload": payload, **fields})


def message_prefix(topic: str, payload: Any, room: str, sender: str, to: str | None = None) -> str:
    """Encode a room message up to its offset: the frame is `prefix + str(offset) + "}"`.

    The broker assigns the offset; encoding everything else once, here, lets every node and
    every member receive the same bytes without re-encoding.
    """
    return _room_message(topic, payload, room, sender, to)[:-1].decode() + ',"offset":'


def ephemeral_frame(topic: str, payload: Any, room: str, sender: str, to: str | None = None) -> str:
    """Encode a message of an ephemeral topic: a room message without an offset."""
    return _room_message(topic, payload, room, sender, to).decode()


def _room_message(topic: str, payload: Any, room: str, sender: str, to: str | None) -> bytes:
    frame: dict[str, Any] = {"topic": topic, "payload": payload, "room": room, "from": sender}
    if to is not None:
        frame["to"] = to
    return orjson.dumps(frame)


def message_frame(prefix: str, offset: int) -> str:
    """Complete a frame made by :func:`message_prefix` with its offset."""
    return f"{prefix}{offset}}}"


def ack_frame(frame_id: FrameId, offset: int | None = None, duplicate: bool = False) -> str:
    """The `ack` for frame `frame_id`, with the offset of the message it published, if any;
    `duplicate` when its key had published that message already (it was not published again)."""
    payload: dict[str, Any] = {"id": frame_id}
    if offset is not None:
        payload["offset"] = offset
    if duplicate:
        payload["duplicate"] = True
    return server_frame("ack", payload)


def error_frame(code: ErrorCode, message: str, frame_id: FrameId | None = None) -> str:
    """An `error` frame; it carries `id` when it answers a frame that had one."""
    payload: dict[str, Any] = {"code": code.value, "message": message}
    if frame_id is not None:
        payload["id"] = frame_id
    return server_frame("error", payload)


def history_frame(room: str, epoch: str, frames: list[str]) -> str:
    """The answer to `room.history`: retained frames (encoded), oldest first, as they are."""
    messages = ",".join(frames)
    return (
        f'{{"topic":"room.history","payload":{{"epoch":{dumps(epoch)},"messages":[{messages}]}},'
        f'"room":{dumps(room)}}}'
    )


def presence_frame(kind: str, room: str, username: str) -> str:
    """A `presence.join` or `presence.leave` frame (`kind` is "join" or "leave")."""
    return server_frame(f"presence.{kind}", {"username": username}, room=room)


def welcome_frame(
    *,
    connection_id: str,
    username: str,
    room: str | None,
    members: list[str] | None = None,
    epoch: str = "",
    offset: int = 0,
    recovered: bool | None = None,
) -> str:
    """The first frame of every accepted connection; without `room`, a connection in no room
    (`{"connectionId", "username", "rooms": []}`)."""
    payload: dict[str, Any] = {"connectionId": connection_id, "username": username}
    if room is None:
        payload["rooms"] = []
        return server_frame("welcome", payload)
    payload.update(roomID=room, members=members or [], epoch=epoch, offset=offset)
    if recovered is not None:
        payload["recovered"] = recovered
    payload["rooms"] = [room]
    return server_frame("welcome", payload)


def joined_frame(
    *, room: str, members: list[str], epoch: str, offset: int, recovered: bool | None
) -> str:
    """The answer to a `room.join`: where the room stands, before its replay."""
    payload: dict[str, Any] = {"roomID": room, "members": members, "epoch": epoch}
    payload["offset"] = offset
    if recovered is not None:
        payload["recovered"] = recovered
    return server_frame("joined", payload, room=room)


def left_frame(room: str, reason: str) -> str:
    """The connection was taken out of `room` by the server (`kicked`, `replaced`) and stays
    open in its other rooms."""
    return server_frame("left", {"roomID": room, "reason": reason}, room=room)
