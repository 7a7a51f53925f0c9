"""Exceptions raised by the Python client.

They derive from :class:`roomcast.RoomcastError`::

    RoomcastError
    └── ClientError            root of the client's exceptions
        ├── ClientClosed       the client is closed for good (refused, kicked, gave up, close())
        ├── RequestError       the server answered a request with an `error` frame
        ├── RequestTimeout     no answer came in time (also a TimeoutError)
        ├── ConnectionLost     the connection dropped before the answer came
        └── ApiError           the HTTP API answered with an error status
"""

from __future__ import annotations

from typing import Any

from ..codes import ErrorCode
from ..errors import RoomcastError

__all__ = [
    "ApiError",
    "ClientClosed",
    "ClientError",
    "ConnectionLost",
    "RequestError",
    "RequestTimeout",
]


def _error_code(value: object) -> ErrorCode:
    try:
        return ErrorCode(str(value))
    except ValueError:
        return ErrorCode.INTERNAL


class ClientError(RoomcastError):
    """Root of the exceptions raised by :mod:`roomcast.client`."""


class ClientClosed(ClientError):
    """The client is closed for good and will not reconnect.

    Attributes:
        close_code: the WebSocket close code that ended it, or None when no connection could
            be made (network error) or `close()` was called before one was.
        reason: the close reason, or a description of the network error.
        wire_code: the `code` of the server's `error` frame sent before the close, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        close_code: int | None = None,
        reason: str = "",
        wire_code: str | None = None,
    ) -> None:
        super().__init__(message, code=_error_code(wire_code) if wire_code else None)
        self.close_code = close_code
        self.reason = reason
        self.wire_code = wire_code


class RequestError(ClientError):
    """The server answered a frame with an `error` frame.

    Attributes:
        code: the error code as an :class:`~roomcast.ErrorCode` (`internal` when the server
            sent a code this client does not know; `wire_code` always has the exact string).
        wire_code: the `code` string exactly as the server sent it (`member_not_found`, ...).
        message: the server's human-readable message.
        frame_id: the `id` of the frame that was refused.
    """

    def __init__(self, wire_code: str, message: str, frame_id: Any = None) -> None:
        super().__init__(message, code=_error_code(wire_code))
        self.wire_code = wire_code
        self.frame_id = frame_id

    def __str__(self) -> str:
        return f"{self.wire_code}: {self.message}"


class RequestTimeout(ClientError, TimeoutError):
    """No `ack` or `error` came within the request's timeout."""


class ConnectionLost(ClientError):
    """The connection dropped while a request was in flight; it may or may not have been
    carried out. The client reconnects on its own; retry if the operation is idempotent."""


class ApiError(ClientError):
    """The HTTP API answered with an error, or could not be reached.

    Attributes:
        status: the HTTP status, or None when the server could not be reached.
        wire_code: the `code` of the JSON error body (`member_not_found`, ...), if any.
    """

    def __init__(
        self, message: str, *, status: int | None = None, wire_code: str | None = None
    ) -> None:
        super().__init__(message, code=_error_code(wire_code) if wire_code else None)
        self.status = status
        self.wire_code = wire_code
