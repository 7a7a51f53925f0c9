"""Close codes and error codes of the wire contract (docs/protocol.md)."""

from __future__ import annotations

from enum import IntEnum, StrEnum

__all__ = ["CloseCode", "ErrorCode"]


class CloseCode(IntEnum):
    """WebSocket close codes the server uses, with the contract's meanings."""

    NORMAL = 1000
    """Normal close; do not reconnect."""
    GOING_AWAY = 1001
    """Server going away; reconnect at once with jitter."""
    INVALID_TEXT = 1007
    """A frame was not valid UTF-8 text."""
    POLICY_VIOLATION = 1008
    """Origin not allowed, or a binary frame."""
    MESSAGE_TOO_BIG = 1009
    """A frame was larger than the configured maximum."""
    INTERNAL_ERROR = 1011
    """Internal error; reconnect with backoff."""
    SERVICE_RESTART = 1012
    """Graceful shutdown; reconnect at once with jitter."""
    BAD_REQUEST = 4400
    """Missing or invalid username, roomID or since."""
    UNAUTHENTICATED = 4401
    """Missing, invalid or expired token."""
    FORBIDDEN = 4403
    """The token does not grant this room."""
    KEEPALIVE_TIMEOUT = 4408
    """Keepalive timeout, or a slow consumer disconnected."""
    DUPLICATE = 4409
    """Username already connected in this room, or replaced by a newer connection."""
    RATE_LIMITED = 4429
    """Too many connections or messages."""
    KICKED = 4499
    """Kicked by the server API."""
    BROKER_UNAVAILABLE = 4503
    """Transient server-side condition: the broker is unavailable."""


class ErrorCode(StrEnum):
    """Codes carried by `error` frames and by HTTP API error bodies."""

    INVALID_JSON = "invalid_json"
    INVALID_FRAME = "invalid_frame"
    UNKNOWN_TOPIC = "unknown_topic"
    FORBIDDEN = "forbidden"
    RATE_LIMITED = "rate_limited"
    MEMBER_NOT_FOUND = "member_not_found"
    HANDLER_ERROR = "handler_error"
    UNAVAILABLE = "unavailable"
    """The frame was not handled (the broker cannot be reached); resending it is safe."""
    TIMEOUT = "timeout"
    """The broker stopped answering after the publish was sent to it: the message may or may
    not have been published."""
    BAD_REQUEST = "bad_request"
    UNAUTHENTICATED = "unauthenticated"
    DUPLICATE = "duplicate"
    MESSAGE_TOO_BIG = "message_too_big"
    NOT_FOUND = "not_found"
    KICKED = "kicked"
    INTERNAL = "internal"
    NOT_JOINED = "not_joined"
    TOO_MANY_ROOMS = "too_many_rooms"
    ROOM_FULL = "room_full"
    """The room holds its class's `max_members` (4429 at connect)."""
