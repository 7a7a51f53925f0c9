"""uvicorn's sans-I/O WebSocket protocol, with the contract's keepalive close code and bounded
closes.

`roomcast serve` runs uvicorn with :class:`WebSocketProtocol`. An application that runs its own
uvicorn can do the same: ``uvicorn.run(app, ws=WebSocketProtocol)``.

The differences from uvicorn's own class:

- A peer that does not answer a ping within `ws_ping_timeout` is closed with 4408 (uvicorn
  uses 1011, which tells clients "internal error"), and the application sees a
  ``websocket.disconnect`` with code 4408 and the reason :data:`KEEPALIVE_REASON`.
- A frame refused by the parser (larger than `ws_max_size`: 1009, not UTF-8: 1007) is answered
  by one `error` frame before the close frame.
- A close frame is written even when the peer has stopped reading (uvicorn waits for the
  write buffer to drain first, which never happens for a stalled reader).
- When the peer does not complete the closing handshake within :data:`CLOSE_TIMEOUT`
  seconds, the socket is aborted; uvicorn closes it gracefully, which waits for the peer to
  read what is buffered, possibly forever.
- The scope offers the protocol itself (:data:`DIRECT_EXTENSION`), so that fan-out can write a
  frame to the socket without a task switch while the transport takes it.
"""

from __future__ import annotations

from typing import Any

from uvicorn._types import ASGISendEvent
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State

from ..codes import CloseCode, ErrorCode
from ..protocol import error_frame

__all__ = ["CLOSE_TIMEOUT", "DIRECT_EXTENSION", "KEEPALIVE_REASON", "WebSocketProtocol"]

CLOSE_TIMEOUT = 2.0
"""Seconds a peer has to answer the server's close frame before the socket is aborted."""

KEEPALIVE_REASON = "keepalive timeout"
"""The close reason (and ``websocket.disconnect`` reason) of a missed pong."""

DIRECT_EXTENSION = "roomcast.direct"
"""The ASGI scope extension offering this protocol's :meth:`~WebSocketProtocol.write_frame`
(``scope["extensions"][DIRECT_EXTENSION]["protocol"]``): fan-out writes without an await."""


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's `websockets-sansio` protocol with 4408 keepalive closes and bounded closes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.close_timeout = CLOSE_TIMEOUT

    def handle_connect(self, event: Request) -> None:
        """Start the handshake; an accepted scope offers synchronous writes."""
        super().handle_connect(event)
        if not self.close_sent:
            self.scope["extensions"][DIRECT_EXTENSION] = {"protocol": self}

    def write_frame(self, frame: bytes) -> int:
        """Write one encoded, unfragmented server frame now, without waiting for the peer.

        Returns:
            The bytes now buffered in the transport (the caller bounds it), or -1 when the
            connection is no longer open and nothing was written.
        """
        if self.close_sent or self.disconnected or self.conn.state is not State.OPEN:
            return -1
        self.transport.write(frame)
        return self.transport.get_write_buffer_size()

    def _abort_later(self) -> None:
        if self.close_timer is not None:
            self.close_timer.cancel()
        if not self.disconnected:
            self.close_timer = self.loop.call_later(self.close_timeout, self.transport.abort)

    def handle_parser_exception(self) -> None:
        """A frame the parser refused (too large: 1009, not UTF-8: 1007): one error frame
        goes out before the close frame, as before every close the contract lists."""
        close = self.conn.close_sent
        if close is not None and not self.close_sent:
            if close.code == CloseCode.MESSAGE_TOO_BIG:
                text = error_frame(ErrorCode.MESSAGE_TOO_BIG, close.reason or "frame too large")
            elif close.code == CloseCode.INVALID_TEXT:
                text = error_frame(ErrorCode.INVALID_FRAME, "frame is not valid UTF-8 text")
            else:
                text = None
            if text is not None:
                self.transport.write(Frame(Opcode.TEXT, text.encode()).serialize(mask=False))
        super().handle_parser_exception()

    def keepalive_timeout(self) -> None:
        """No pong in time: close with 4408 and tell the application why."""
        self.pong_timer = None
        self.pending_ping_payload = None
        if self.close_sent or self.transport.is_closing():
            return
        code = int(CloseCode.KEEPALIVE_TIMEOUT)
        self.queue.put_nowait(
            {"type": "websocket.disconnect", "code": code, "reason": KEEPALIVE_REASON}
        )
        self.conn.fail(code, KEEPALIVE_REASON)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self.transport.close()
        self._abort_later()

    async def send(self, message: ASGISendEvent) -> None:
        """Send an ASGI message; a close frame does not wait for the peer to read."""
        if message["type"] != "websocket.close" or not self.handshake_complete:
            await super().send(message)
            if message["type"] == "websocket.accept" and self.handshake_complete:
                # Unused once open; every idle connection would hold them (~2.5 KiB).
                self.request = self.response = None  # type: ignore[assignment]
            return
        paused = not self.writable.is_set()
        if paused:
            # The peer stopped reading: queue the close frame behind what is buffered. The
            # event is set only for this call, which does not yield before writing.
            self.writable.set()
        try:
            await super().send(message)
        finally:
            if paused and not self.disconnected:
                self.writable.clear()
        if self.close_sent:
            self._abort_later()

    def shutdown(self) -> None:
        """Server shutdown: close with 1012 (unless closed already), abort if unanswered."""
        super().shutdown()
        self._abort_later()
