"""Exceptions raised by roomcast.

All of them derive from :class:`RoomcastError`::

    RoomcastError
    ├── ConfigError            invalid settings or flags
    ├── FrameError             a client frame or API body that breaks the contract
    ├── Refused                a connection refused at join (carries a close code)
    ├── MemberNotFound         a command addressed a member connected nowhere
    ├── BrokerUnavailable      the broker cannot be reached (the operation was not done)
    ├── BrokerTimeout          the broker stopped answering (the outcome is unknown)
    └── HandlerError           a topic handler raised (wraps the original)
"""

from __future__ import annotations

from .codes import CloseCode, ErrorCode

__all__ = [
    "BrokerTimeout",
    "BrokerUnavailable",
    "ConfigError",
    "FrameError",
    "HandlerError",
    "MemberNotFound",
    "Refused",
    "RoomcastError",
]


class RoomcastError(Exception):
    """Root of every roomcast exception; `code` is the contract's error code."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, *, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ConfigError(RoomcastError):
    """A setting or command-line flag has a value that is not allowed."""

    code = ErrorCode.BAD_REQUEST


class FrameError(RoomcastError):
    """A client frame (or HTTP API body) breaks the contract.

    Args:
        code: the error code sent back (`invalid_json`, `invalid_frame`, ...).
        message: a human-readable reason.
        frame_id: the frame's `id`, when it could be read.
    """

    def __init__(self, code: ErrorCode, message: str, *, frame_id: str | int | None = None) -> None:
        super().__init__(message, code=code)
        self.frame_id = frame_id


class Refused(RoomcastError):
    """A connection is refused: the server sends one error frame and closes with `close_code`."""

    def __init__(self, close_code: CloseCode, code: ErrorCode, message: str) -> None:
        super().__init__(message, code=code)
        self.close_code = close_code


class MemberNotFound(RoomcastError):
    """The addressed member is connected nowhere in the cluster."""

    code = ErrorCode.MEMBER_NOT_FOUND


class BrokerUnavailable(RoomcastError):
    """The broker cannot be reached; the operation was not carried out."""

    code = ErrorCode.UNAVAILABLE


class BrokerTimeout(RoomcastError):
    """The broker stopped answering after the operation was sent to it: it may or may not
    have been carried out (a publish resent with the same key happens at most once)."""

    code = ErrorCode.TIMEOUT


class HandlerError(RoomcastError):
    """A topic handler raised; the original exception is the `__cause__`."""

    code = ErrorCode.HANDLER_ERROR
