"""Every use of a uvicorn (and websockets) internal, in one place: the fast path of
`roomcast serve`.

No supported API of uvicorn or websockets writes a frame to a socket synchronously, which is
what fan-out needs to reach its speed (docs/benchmarks.md), and none lets the contract's close
codes through (4408 for a missed pong, an `error` frame before 1007/1009). So `roomcast serve`
runs uvicorn with the protocol classes below, which subclass undocumented uvicorn classes and
read their attributes. :func:`missing_internals` checks, at startup, that each attribute and
method they rely on is there; when one is missing, `roomcast serve` logs one warning and runs
uvicorn's own classes with the plain ASGI path (correct, slower). docs/architecture.md lists
what the fast path needs.

:class:`WebSocketProtocol` differs from uvicorn's `websockets-sansio` protocol in that:

- A peer that does not answer a ping within `ws_ping_timeout` is closed with 4408 (uvicorn
  uses 1011, which tells clients "internal error"), and the application sees a
  ``websocket.disconnect`` with code 4408 and the reason :data:`KEEPALIVE_REASON`.
- A frame refused by the parser (larger than `ws_max_size`: 1009, not UTF-8: 1007) is answered
  by one `error` frame before the close frame, and logs no traceback.
- A close frame is written even when the peer has stopped reading, and when the peer does not
  complete the closing handshake within :data:`CLOSE_TIMEOUT` seconds the socket is aborted
  (:data:`SLOW_PEER_CLOSE_TIMEOUT` when it had stopped reading: it must first read what is
  buffered before the close frame, such as a slow consumer's 4408).
- The answer to a peer's close frame waits until the application has handled the disconnect
  (at most :data:`CLOSE_REPLY_WAIT` seconds): a client whose close completed has left its
  rooms, and may connect again under its username at once, to any node.
- Every handshake ends: a request the WebSocket parser refuses gets an HTTP error and a close,
  and one the application has not accepted by the handshake deadline gets 408/503.
- The frames of one read are handed to the application a slice at a time, one slice per
  event-loop iteration, so that one client's burst cannot stall the others; nothing more is
  parsed while the application still has frames of that connection to handle.
- Whole, unfragmented, masked text frames under 64 KiB that arrive between frames (nothing
  partial buffered in websockets' parser, no fragmented message under way) are parsed here,
  with websockets' own unmasking; everything else (control frames, fragments, binary, large,
  invalid) goes through websockets' parser as before, from the first byte it would see.
- Pongs are only written while the peer reads: a client that sends pings and never reads gets
  one pong for its latest ping once it reads again, and is not read meanwhile.
- The scope offers the protocol itself (:data:`DIRECT_EXTENSION`): fan-out writes a frame to
  the socket without a task switch while the transport takes it, and an application that
  registers a receiver (:meth:`WebSocketProtocol.receive_directly`) gets each frame in the
  read's callback while it waits in `receive()` with nothing queued (no queue, no task switch,
  no pause and resume of reading per frame).

The direct path writes frames straight to the transport, past websockets' `ServerProtocol`.
That is correct only while those frames are unfragmented text frames written whole and no
extension transforms payloads: the protocol offers the direct path only to connections that
negotiated no extension (`roomcast serve` turns permessage-deflate off).
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import logging
import re
import struct
import time
import weakref
from collections.abc import Callable
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets import http11
from websockets.datastructures import Headers, MultipleValuesError
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import Protocol, State
from websockets.server import ServerProtocol
from websockets.utils import accept_key

try:  # as websockets itself unmasks: its C speedup, else its pure Python version
    from websockets.speedups import apply_mask as _apply_mask
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask as _apply_mask

from ..codes import CloseCode, ErrorCode
from ..errors import Refused
from ..limits import ConnectionLimits, Reservation
from ..log import log_event
from ..protocol import error_frame
from .asgi import CLOSE_TIMEOUT, DIRECT_EXTENSION, KEEPALIVE_REASON, PENDING_MESSAGE

__all__ = [
    "CLOSE_TIMEOUT",
    "DIRECT_EXTENSION",
    "KEEPALIVE_REASON",
    "READ_SLICE",
    "SLOW_PEER_CLOSE_TIMEOUT",
    "DirectWriter",
    "WebSocketProtocol",
    "forget_captured_signals",
    "handshake_protocol",
    "missing_internals",
    "text_frame",
    "websocket_protocol",
]

SLOW_PEER_CLOSE_TIMEOUT = 10.0
"""Seconds a peer that had stopped reading when the server closed has to read up to the
close frame (queued behind what its socket holds) and answer it, before the socket is
aborted (which drops what it has not read)."""

READ_SLICE = 2048
"""Bytes of one read fed to the WebSocket parser at a time. After a slice that yielded frames,
the rest waits until the application has handled them, and one event-loop iteration passes."""

DRAIN_BYTES = 65536
"""Largest request body (by its Content-Length) still read and dropped after an answer given
before it arrived (a 400, 401, 413...), so that the socket stays usable. A larger body, one of
unknown length, or a 408 gets `Connection: close` on the answer instead."""

LATER_RATIO = 4
"""A presence window lasts at least this many times as long as the previous one's writes
took: those writes then take at most about a fifth of the event loop."""

LATER_MAX = 1.0
"""Longest presence window in seconds, however long the writes took."""

MAX_HEAD = 16384
"""Largest request head, as h11 bounds it by default (`--h11-max-incomplete-event-size` of
uvicorn): an upgrade taken without h11 is held to the same bound."""

POST_CLOSE_BYTES = 16384
"""Bytes of a peer's that are still parsed after the server's close frame (looking for the
peer's close frame); what comes after them is dropped unread until the close times out."""

CLOSE_REPLY_WAIT = 1.0
"""Longest time in seconds the answer to a peer's close frame waits for the application to
have handled the disconnect (see `WebSocketProtocol.handle_close`)."""

# What the subclasses below use of uvicorn's classes: methods they override or call, and
# attributes they read or write (instance attributes are checked on a real instance).
_WS_METHODS = (
    "connection_made",
    "connection_lost",
    "data_received",
    "handle_events",
    "handle_close",
    "handle_connect",
    "handle_ping",
    "handle_parser_exception",
    "keepalive_timeout",
    "pause_writing",
    "resume_writing",
    "receive",
    "run_asgi",
    "send",
    "send_500_response",
    "send_receive_event_to_app",
    "shutdown",
    "stop_keepalive",
)
_WS_ATTRIBUTES = (
    "close_sent",
    "close_timeout",
    "close_timer",
    "conn",
    "curr_msg_data_type",
    "disconnected",
    "frames",
    "handshake_complete",
    "handshake_initiated",
    "loop",
    "pending_ping_payload",
    "pong_timer",
    "queue",
    "read_paused",
    "transport",
    "writable",
)
_CONN_ATTRIBUTES = (
    "accept_called",
    "available_extensions",
    "available_subprotocols",
    "close_rcvd",
    "close_sent",
    "current_size",
    "data_to_send",
    "events_received",
    "extensions",
    "fail",
    "handshake_exc",
    "max_fragment_size",
    "max_message_size",
    "origin",
    "origins",
    "parser",
    "parser_exc",
    "reader",
    "receive_data",
    "send_close",
    "state",
    "subprotocol",
)
_HTTP_METHODS = (
    "connection_made",
    "connection_lost",
    "data_received",
    "handle_events",
    "handle_websocket_upgrade",
    "on_response_complete",
)
_HTTP_ATTRIBUTES = (
    "app_state",
    "client",
    "config",
    "conn",
    "connections",
    "headers",
    "loop",
    "server_state",
    "transport",
    "ws_protocol_class",
)


def missing_internals() -> list[str]:
    """What the fast path relies on and the installed uvicorn/websockets lack (empty: all
    there). Checked by `roomcast serve` at startup and by the canary test."""
    missing = [
        f"WebSocketsSansIOProtocol.{name}"
        for name in _WS_METHODS
        if not callable(getattr(WebSocketsSansIOProtocol, name, None))
    ]
    missing += [
        f"H11Protocol.{name}"
        for name in _HTTP_METHODS
        if not callable(getattr(H11Protocol, name, None))
    ]
    if not hasattr(uvicorn.Server, "handle_exit"):
        missing.append("Server.handle_exit")
    try:
        ws, http = _sample_protocols()
    except Exception as exc:  # any change of the constructors' signatures
        return [*missing, f"protocol constructors ({type(exc).__name__}: {exc})"]
    missing += [f"WebSocketsSansIOProtocol().{a}" for a in _WS_ATTRIBUTES if not hasattr(ws, a)]
    conn = getattr(ws, "conn", None)
    missing += [f"ServerProtocol.{a}" for a in _CONN_ATTRIBUTES if not hasattr(conn, a)]
    if not isinstance(getattr(getattr(conn, "reader", None), "buffer", None), bytearray):
        missing.append("ServerProtocol.reader.buffer")
    missing += [f"H11Protocol().{a}" for a in _HTTP_ATTRIBUTES if not hasattr(http, a)]
    return missing


async def _sample_app(scope: Any, receive: Any, send: Any) -> None:
    """The app of the throw-away protocols :func:`missing_internals` inspects."""


def _sample_protocols() -> tuple[Any, Any]:
    from uvicorn.server import ServerState

    # log_config=None: a Config must not reconfigure the loggers roomcast has set up.
    config = uvicorn.Config(_sample_app, ws="websockets-sansio", http="h11", log_config=None)
    config.load()
    loop = asyncio.new_event_loop()
    try:
        state = ServerState()
        ws = WebSocketsSansIOProtocol(config, state, {}, _loop=loop)
        http = H11Protocol(config, state, {}, _loop=loop)
    finally:
        loop.close()
    return ws, http


def forget_captured_signals(server: uvicorn.Server) -> None:
    """Keep uvicorn from raising a handled SIGTERM/SIGINT again once the server has stopped
    (the process then exits with status 0 rather than dying by the signal).

    Not part of :func:`missing_internals`: without the private list this does nothing, and
    the process then ends by the signal after its graceful shutdown; the canary test notices.
    """
    captured = getattr(server, "_captured_signals", None)
    if isinstance(captured, list):
        captured.clear()


def text_frame(data: str) -> bytes:
    """The unmasked, unfragmented WebSocket text frame carrying `data`."""
    payload = data.encode()
    n = len(payload)
    if n < 126:
        header = bytes((0x81, n))
    elif n < 65536:
        header = struct.pack("!BBH", 0x81, 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 127, n)
    return header + payload


class DirectWriter:
    """The direct path of one event loop: frames held during one loop iteration go out in one
    write per connection at its end, and a string sent to many connections in a row (a
    fan-out) is encoded once.

    Frames that may wait (presence: :meth:`WebSocketProtocol.hold` with `later`) go out at the
    end of a window of a few milliseconds instead, together with whatever that connection got
    meanwhile: when members join a room faster than one per loop iteration, each member gets
    one write per window, not one per join. A frame that may not wait, held behind them, takes
    them along at the end of its iteration, so that nothing is reordered. A window lasts at
    least :data:`LATER_RATIO` times as long as the previous window's writes took, so that
    those writes take a bounded share of the loop however slowly the joins come (in a big
    room each join costs more, and fewer of them would share a fixed window).
    """

    __slots__ = ("_dirty", "_later", "_loop", "_spent", "last_frame", "last_text")

    _by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, DirectWriter] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._dirty: list[WebSocketProtocol] = []
        self._later: list[WebSocketProtocol] = []
        self._spent = 0.0  # seconds the last window's writes took
        self.last_text: str | None = None
        self.last_frame = b""

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> DirectWriter:
        """The writer of `loop` (created on first use)."""
        writer = cls._by_loop.get(loop)
        if writer is None:
            writer = cls._by_loop[loop] = cls(loop)
        return writer

    def encode(self, data: str) -> bytes:
        """`data`'s text frame, remembered for the next call with the same string object."""
        frame = text_frame(data)
        self.last_text, self.last_frame = data, frame
        return frame

    def mark(self, protocol: WebSocketProtocol) -> None:
        """`protocol` holds frames: write them at the end of this loop iteration."""
        if not self._dirty:
            self._loop.call_soon(self._flush)
        self._dirty.append(protocol)

    def mark_later(self, protocol: WebSocketProtocol, delay: float) -> None:
        """`protocol` holds frames that may wait: write them within `delay` seconds."""
        if not self._later:
            self._loop.call_later(max(delay, LATER_RATIO * self._spent), self._flush_later)
        self._later.append(protocol)

    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        self._write(dirty)

    def _flush_later(self) -> None:
        later, self._later = self._later, []
        started = time.perf_counter()
        self._write(later)
        self._spent = min(time.perf_counter() - started, LATER_MAX / LATER_RATIO)

    @staticmethod
    def _write(protocols: list[WebSocketProtocol]) -> None:
        # A connection written already (its frames were due sooner) has nothing pending.
        for protocol in protocols:
            # WebSocketProtocol.flush, inline: this loop runs once per member and iteration.
            frames = protocol._pending
            if frames is not None:
                protocol._pending = None
                if protocol.close_sent or protocol.disconnected:
                    continue
                if protocol.conn.state is State.OPEN:
                    protocol.transport.write(frames[0] if len(frames) == 1 else b"".join(frames))


class _Inbox:
    """What uvicorn's protocol uses of its `asyncio.Queue` (`put_nowait`, `get`, `get_nowait`,
    `empty`, `qsize`) for its one reader, the application: a list and at most one waiter,
    where an `asyncio.Queue` holds three deques (760 bytes each) for the life of every
    connection."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        """Append `item` and wake the reader."""
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def get_nowait(self) -> Any:
        """The first item (`asyncio.QueueEmpty` when there is none)."""
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.pop(0)

    async def get(self) -> Any:
        """The first item, once there is one (one reader at a time)."""
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)

    def empty(self) -> bool:
        """Whether nothing is queued."""
        return not self._items

    def qsize(self) -> int:
        """How many items are queued."""
        return len(self._items)


class _Writable:
    """What uvicorn's protocol uses of its `writable` `asyncio.Event`, without the deque of
    waiters an Event holds for the life of every connection (the list exists while one
    waits)."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        """Whether the transport takes more data."""
        return self._set

    def set(self) -> None:
        """It does again: wake the writers waiting."""
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        """It takes no more for now."""
        self._set = False

    async def wait(self) -> bool:
        """Return once it is set."""
        while not self._set:
            waiter = asyncio.get_running_loop().create_future()
            if self._waiters is None:
                self._waiters = []
            self._waiters.append(waiter)
            await waiter
        return True


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's `websockets-sansio` protocol with the contract's closes, bounded handshakes,
    sliced reads and the direct write path (see the module docstring).

    An application running its own uvicorn can use it too:
    ``uvicorn.run(app, ws=WebSocketProtocol, ws_per_message_deflate=False)``.
    """

    # This class's own state in slots: the instance dict keeps only uvicorn's.
    __slots__ = (
        "_after_close",
        "_close_reply",
        "_handed",
        "_handshake_timer",
        "_owed_pong",
        "_parked",
        "_parse_scheduled",
        "_pending",
        "_receiver",
        "_soon",
        "_unparsed",
        "_writable",
        "reservation",
        "writer",
    )

    handshake_timeout: float | None = None
    """Seconds from the upgrade to the 101 response; None leaves it to the HTTP protocol."""
    presence_window: float = 0.0
    """Seconds a frame held with `later` (presence) may wait for the frames after it, so that
    they share one write; 0: it goes out at the end of its loop iteration like the others."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if type(self.conn) is ServerProtocol:
            self.conn.__class__ = _PlainServerProtocol  # only `accept` differs
        # Lighter stand-ins for uvicorn's queue and event (an idle connection holds them).
        self.queue = _Inbox()  # type: ignore[assignment]
        self.writable = _Writable()  # type: ignore[assignment]
        self.close_timeout = CLOSE_TIMEOUT
        self.writer: DirectWriter | None = None
        self._pending: list[bytes] | None = None
        self._soon = False  # the frames pending are due at the end of this loop iteration
        self._unparsed = b""
        self._parse_scheduled = False
        self._after_close = 0
        self._owed_pong: bytes | None = None
        self._handshake_timer: asyncio.TimerHandle | None = None
        self.reservation: Reservation | None = None
        self._receiver: Callable[[str | bytes], object | None] | None = None
        self._writable = True  # `writable.is_set()`, without a call per frame
        self._parked = False  # the application waits in receive()
        self._handed = False  # the slice being parsed handed a frame to the receiver
        self._close_reply: asyncio.TimerHandle | None = None  # see handle_close

    # The handshake

    def connection_made(self, transport: Any) -> None:
        """Start the handshake's clock (when this class has a handshake timeout and no
        deadline was given yet)."""
        super().connection_made(transport)
        if self.handshake_timeout is not None and self._handshake_timer is None:
            self.handshake_deadline(self.loop.time() + self.handshake_timeout)

    def receive_head(self, head: bytes) -> None:
        """The socket's first read, a whole upgrade request head (:func:`_whole_upgrade`):
        parsed here when it is plain (:func:`_parse_head`: what browsers and client
        libraries send), else fed to websockets' parser as it came."""
        request = _parse_head(head)
        if request is None:
            self.data_received(head)
            return
        # websockets' server parser goes on with the frame parser once it has the request.
        parser = Protocol.parse(self.conn)
        next(parser)
        self.conn.parser = parser
        self.handle_connect(request)

    def handshake_deadline(self, when: float) -> None:
        """Answer the handshake with an HTTP error and close unless it is complete at `when`
        (loop time)."""
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
        self._handshake_timer = self.loop.call_at(when, self._handshake_expired)

    def _handshake_done(self) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        if self.reservation is not None:
            self.reservation.release()
            self.reservation = None

    def _handshake_expired(self) -> None:
        self._handshake_timer = None
        if self.handshake_complete or self.transport.is_closing():
            return
        started = self.handshake_initiated
        log_event(
            "connection.handshake_timeout",
            level=logging.DEBUG,
            client=self.client[0] if self.client else None,
            upgraded=started,
        )
        if started:
            # The request was read; the application did not accept it in time.
            self._reject(503, "Service Unavailable", "the server did not accept in time\n")
            self.queue.put_nowait({"type": "websocket.disconnect", "code": 1006})
        else:
            self._reject(408, "Request Timeout", "the handshake took too long\n")

    def _reject(self, status: int, phrase: str, body: str) -> None:
        """Answer the upgrade with an HTTP error and close; nothing is written after it."""
        self.transport.write(_http_refusal(status, phrase, body))
        self.handshake_complete = self.close_sent = self.disconnected = True
        self._handshake_done()
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        """Feed the parser; a request it refuses is answered at once."""
        if not self.handshake_initiated:
            super().data_received(data)
            if not self.handshake_initiated and self.conn.handshake_exc is not None:
                self._refuse_request()
            return
        if self.close_sent:
            # Only the peer's close frame matters now; past a bound, bytes are dropped
            # unparsed and the close timer ends the socket.
            if self._after_close + len(data) > POST_CLOSE_BYTES:
                data = data[: max(0, POST_CLOSE_BYTES - self._after_close)]
                if not data:
                    self._after_close = POST_CLOSE_BYTES
                    return
            self._after_close += len(data)
        if self._unparsed:
            self._unparsed += data
            return
        self._feed(data)

    def _refuse_request(self) -> None:
        """The WebSocket parser refused the request (header line too long, too many headers,
        a body): send its answer (or 400) and close."""
        written = b"".join(self.conn.data_to_send())
        if written:
            self.transport.write(written)
            self.handshake_complete = self.close_sent = self.disconnected = True
            self._handshake_done()
            self.transport.close()
        else:
            self._reject(400, "Bad Request", f"{self.conn.handshake_exc}\n")

    def handle_connect(self, event: Request) -> None:
        """Start the handshake; an accepted scope offers synchronous writes."""
        super().handle_connect(event)
        if self.close_sent:
            self._handshake_done()
            return
        # ASGI wants header names in lower case; uvicorn passes them as the request had them.
        self.scope["headers"] = [(name.lower(), value) for name, value in self.scope["headers"]]
        if not self.conn.extensions:
            # Direct writes bypass websockets' frame encoder: only with no extension.
            self.writer = DirectWriter.of(self.loop)
            extensions = self.scope.setdefault("extensions", {})
            extensions[DIRECT_EXTENSION] = {"protocol": self}

    def send_500_response(self) -> None:
        """uvicorn's 500 answer to a failed handshake, unless the socket was answered."""
        if self.close_sent or self.conn.handshake_exc is not None:
            return
        super().send_500_response()

    # Reading

    def _feed(self, data: bytes) -> None:
        """Parse `data` a slice at a time; stop once a slice produced frames for the app."""
        size = len(data)
        start = 0
        while start < size:
            end = start + READ_SLICE
            self._handed = False
            parsed = self._parse_text_frames(data, start, end) if self._between_frames() else start
            if parsed > start:
                start = parsed
            else:
                self.conn.receive_data(data[start:end] if start or end < size else data)
                start = end
                if self.conn.parser_exc is not None:
                    self.handle_parser_exception()
                    return
                self.handle_events()
            if self.transport.is_closing():
                return
            if start < size and (self._handed or not self.queue.empty()):
                self._unparsed = data[start:]
                self._pause_reading()
                if self.queue.empty():
                    # Handled in place: nothing will call receive() to parse on.
                    self._schedule_parse()
                return

    def _between_frames(self) -> bool:
        """Whether the next byte starts a frame that may be parsed here: the connection is
        open, websockets' parser holds nothing partial and no fragmented message is under
        way, and the direct path is on (no extension)."""
        conn = self.conn
        return (
            self.writer is not None
            and not self.close_sent
            and conn.state is State.OPEN
            and conn.current_size is None
            and not conn.reader.buffer
            and not self.frames
        )

    def _parse_text_frames(self, data: bytes, start: int, end: int) -> int:
        """Hand the whole, masked, unfragmented text frames (payload under 64 KiB, within the
        size limits, valid UTF-8) that start in ``data[start:end]`` to the application, up to
        the first other frame; returns where parsing stopped."""
        conn = self.conn
        limit = conn.max_message_size
        fragment_limit = conn.max_fragment_size
        if fragment_limit is not None and (limit is None or fragment_limit < limit):
            limit = fragment_limit
        size = len(data)
        position = start
        while position < end and size - position >= 6 and data[position] == 0x81:
            length = data[position + 1] ^ 0x80  # the mask bit must be set
            if length < 126:
                head = position + 2
            elif length == 126 and size - position >= 8:
                length = (data[position + 2] << 8) | data[position + 3]
                head = position + 4
            else:
                break  # unmasked, 64-bit length, or the length is not all here
            stop = head + 4 + length
            if stop > size or (limit is not None and length > limit):
                break
            try:
                text = _apply_mask(data[head + 4 : stop], data[head : head + 4]).decode()
            except UnicodeDecodeError:
                break  # websockets' parser and send_receive_event_to_app answer it
            position = stop
            self._hand_over(text)
            if self.close_sent or self.transport.is_closing():
                break
        return position

    def _schedule_parse(self) -> None:
        if not self._parse_scheduled:
            self._parse_scheduled = True
            self.loop.call_soon(self._parse_more)

    def _parse_more(self) -> None:
        self._parse_scheduled = False
        if not self.queue.empty():
            return  # receive() parses on once the application has taken the queue
        data, self._unparsed = self._unparsed, b""
        if data and not self.transport.is_closing():
            self._feed(data)
        self._resume_reading_if_idle()

    def _pause_reading(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def _resume_reading_if_idle(self) -> None:
        if (
            self.read_paused
            and not self._unparsed
            and self.queue.empty()
            and self._owed_pong is None
            and not self.transport.is_closing()
        ):
            self.read_paused = False
            self.transport.resume_reading()

    async def receive(self) -> Any:
        """The next ASGI message; once the app has taken every frame, parse on (in the next
        loop iteration) or read on."""
        self._parked = True
        try:
            message = await self.queue.get()
        finally:
            self._parked = False
        if self.queue.empty():
            if self._unparsed:
                self._schedule_parse()
            else:
                self._resume_reading_if_idle()
        return message

    def receive_directly(self, receiver: Callable[[str | bytes], object | None] | None) -> None:
        """Hand each complete message (text as `str`, binary as `bytes`) to `receiver` in the
        read's callback, whenever the application waits in `receive()` with nothing queued.

        `receiver` returns None when it has handled the message, or an object the application
        must handle before anything else: it is queued as ``{"type": PENDING_MESSAGE,
        "pending": obj}``, and later frames queue behind it. None stops direct receiving.
        """
        self._receiver = receiver

    def send_receive_event_to_app(self) -> None:
        """Queue a complete message for the app (uvicorn's, with no traceback logged for a
        text frame that is not UTF-8)."""
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.close_sent:
            return
        value: str | bytes
        if self.curr_msg_data_type == "text":
            try:
                value = data.decode()
            except UnicodeDecodeError:
                self.conn.send_close(int(CloseCode.INVALID_TEXT), "frame is not valid UTF-8")
                self.handle_parser_exception()
                return
        else:
            value = data
        self._hand_over(value)

    def _hand_over(self, value: str | bytes) -> None:
        """Give a complete message to the application: to the receiver while the application
        waits with nothing queued, else into the queue (reading pauses until it is taken)."""
        receiver = self._receiver
        if receiver is not None and self._parked and self.queue.empty():
            self._handed = True
            pending = receiver(value)
            if pending is None:
                return
            message: Any = {"type": PENDING_MESSAGE, "pending": pending}
        elif isinstance(value, str):
            message = {"type": "websocket.receive", "text": value}
        else:
            message = {"type": "websocket.receive", "bytes": value}
        self.queue.put_nowait(message)
        self._pause_reading()

    # Control frames

    def handle_ping(self) -> None:
        """Answer a ping while the peer reads; otherwise owe one pong (for the latest ping)
        and stop reading until the peer reads again."""
        if self.writable.is_set():
            super().handle_ping()
            return
        # websockets queued the pong: drop it, remember the payload of the latest ping.
        for chunk in self.conn.data_to_send():
            if chunk:
                self._owed_pong = _pong_payload(chunk)
        self._pause_reading()

    def pause_writing(self) -> None:
        """The transport's buffer is above its high-water mark: frames queue meanwhile."""
        super().pause_writing()
        self._writable = False

    def resume_writing(self) -> None:
        """The peer reads again: pay the pong owed, read on."""
        super().resume_writing()
        self._writable = True
        owed, self._owed_pong = self._owed_pong, None
        if owed is not None and not self.close_sent and not self.transport.is_closing():
            self.transport.write(Frame(Opcode.PONG, owed).serialize(mask=False))
        self._resume_reading_if_idle()

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
                self.flush()
                self.transport.write(text_frame(text))
        self._unparsed = b""
        super().handle_parser_exception()

    def handle_close(self, event: Any) -> None:
        """The peer's close frame. uvicorn answers it at once, before the application has
        seen the disconnect: a client could then connect again before its member left the
        room (a leave through Redis takes a round trip) and be refused as a duplicate. Here
        the answer waits until the application returns (`run_asgi`), at most
        :data:`CLOSE_REPLY_WAIT` seconds."""
        close = self.conn.close_rcvd
        if self.close_sent or self.transport.is_closing() or close is None:
            super().handle_close(event)
            return
        self.queue.put_nowait(
            {"type": "websocket.disconnect", "code": close.code, "reason": close.reason}
        )
        self.stop_keepalive()  # a ping would write the answer along with it
        # While uvicorn's close timer is set, its run_asgi leaves the socket open.
        self._close_reply = self.close_timer = self.loop.call_later(
            CLOSE_REPLY_WAIT, self._reply_to_close
        )

    def _reply_to_close(self) -> None:
        """Write the answer to the peer's close frame, and close the socket."""
        timer, self._close_reply = self._close_reply, None
        if timer is None:
            return
        timer.cancel()
        if self.close_timer is timer:
            self.close_timer = None
        if not self.transport.is_closing():
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.transport.close()

    async def run_asgi(self) -> None:
        """uvicorn's, then the answer to a close frame of the peer's held until now."""
        try:
            await super().run_asgi()
        finally:
            self._reply_to_close()

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

    # Writing

    def hold(self, data: str, later: bool = False) -> bool:
        """Write the text frame of `data` at the end of this loop iteration (direct path),
        unless the transport is above its high-water mark: then False, and nothing is held.
        With `later` (a presence frame), within :attr:`presence_window` instead, unless a
        frame that may not wait comes after it sooner; the frames' order is kept either way."""
        if not self._writable:
            return False
        writer = self.writer
        if writer is None:
            self.write_frame(text_frame(data))
            return True
        frame = writer.last_frame if data is writer.last_text else writer.encode(data)
        pending = self._pending
        if pending is not None:
            # The common case of a burst of joins: one more frame for the same write.
            pending.append(frame)
            if not later and not self._soon:
                self._soon = True
                writer.mark(self)
        elif later and self.presence_window:
            self._pending = [frame]
            self._soon = False
            writer.mark_later(self, self.presence_window)
        else:
            self._pending = [frame]
            self._soon = True
            writer.mark(self)
        return True

    def hold_more(self, data: str) -> bool:
        """Add the text frame of `data` to the frames held, which keep their write's time
        (the common case of a burst of joins, one call per member and frame). False, with
        nothing held, when none are held or the transport is above its high-water mark."""
        pending = self._pending
        if pending is None or not self._writable:
            return False
        writer = self.writer  # frames are only held with a writer
        assert writer is not None
        pending.append(writer.last_frame if data is writer.last_text else writer.encode(data))
        return True

    @staticmethod
    def hold_more_all(sockets: list[Any], data: str) -> list[int]:
        """:meth:`hold_more` on each of `sockets` (protocols of this class, or None) in one
        loop, the frame encoded once; the positions of those that did not take it."""
        frame = b""
        refused: list[int] = []
        for i, protocol in enumerate(sockets):
            pending = None if protocol is None else protocol._pending
            if pending is not None and protocol._writable:
                if not frame:
                    writer = protocol.writer
                    frame = writer.last_frame if data is writer.last_text else writer.encode(data)
                pending.append(frame)
            else:
                refused.append(i)
        return refused

    def flush(self) -> None:
        """Write the frames held for the end of this loop iteration now."""
        frames = self._pending
        if frames is not None:
            self._pending = None
            self.write_frame(frames[0] if len(frames) == 1 else b"".join(frames))

    def discard(self) -> None:
        """Drop the frames held and not yet written."""
        self._pending = None

    @property
    def write_buffer_size(self) -> int:
        """Bytes in the transport's write buffer."""
        transport = self.transport
        return 0 if transport is None else transport.get_write_buffer_size()

    def write_frame(self, frame: bytes) -> int:
        """Write encoded, unfragmented server frames now, without waiting for the peer.

        Returns:
            The bytes now buffered in the transport (the caller bounds it), or -1 when the
            connection is no longer open and nothing was written.
        """
        if self.close_sent or self.disconnected or self.conn.state is not State.OPEN:
            return -1
        self.transport.write(frame)
        return self.transport.get_write_buffer_size()

    def _abort_later(self, timeout: float | None = None) -> None:
        if self.close_timer is not None:
            self.close_timer.cancel()
        if not self.disconnected:
            delay = self.close_timeout if timeout is None else timeout
            self.close_timer = self.loop.call_later(delay, self.transport.abort)

    async def send(self, message: Any) -> None:
        """Send an ASGI message; a close frame does not wait for the peer to read."""
        if message["type"] != "websocket.close" or not self.handshake_complete:
            await super().send(message)
            if message["type"] == "websocket.accept" and self.handshake_complete:
                self._handshake_done()
                # Unused once open; every idle connection would hold them (~2.5 KiB).
                self.request = self.response = None  # type: ignore[assignment]
                _drop_handshake_parser(self.conn)
            return
        paused = not self.writable.is_set()
        if paused:
            # The peer stopped reading: queue the close frame behind what is buffered. The
            # event is set only for this call, which does not yield before writing.
            self.writable.set()
        try:
            self.flush()
            await super().send(message)
        finally:
            if paused and not self.disconnected:
                self.writable.clear()
        if self.close_sent:
            # What the peer sent before it saw the close is parsed (for its close frame) up
            # to a bound: cut at the end, as the parser needs the stream without gaps.
            self._unparsed = self._unparsed[:POST_CLOSE_BYTES]
            self._after_close = len(self._unparsed)
            # A peer that stopped reading (a slow consumer's 4408) reaches the close frame
            # only once it reads what is buffered before it: it gets longer for that.
            self._abort_later(SLOW_PEER_CLOSE_TIMEOUT if paused else None)

    def connection_lost(self, exc: Exception | None) -> None:
        """The socket is gone: give back its place among the handshakes."""
        self._handshake_done()
        self._pending = None
        self._unparsed = b""
        self._receiver = None
        # The scope's offer of this protocol is a reference cycle: without it the protocol
        # is freed once the application lets go, not by the garbage collector's next full
        # collection (which walks every object of every connection).
        extensions = getattr(self, "scope", {}).get("extensions")
        if extensions:
            extensions.pop(DIRECT_EXTENSION, None)
        super().connection_lost(exc)

    def shutdown(self) -> None:
        """Server shutdown: close with 1012 (unless closed already), abort if unanswered."""
        if self._close_reply is not None:
            # The peer closed first: its close frame is answered now.
            self.stop_keepalive()
            self._reply_to_close()
            return
        self.flush()
        super().shutdown()
        self._abort_later()


_WS_KEY = re.compile(r"[A-Za-z0-9+/]{22}==")
"""A `Sec-WebSocket-Key` that decodes to 16 bytes, in its plain form."""
_TOKEN = r"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_UPGRADE_OPTION = re.compile(
    rf"(?:{_TOKEN}[ \t]*,[ \t]*)*upgrade(?:[ \t]*,[ \t]*{_TOKEN})*", re.IGNORECASE
)
"""A `Connection` header that is a plain list of options, `upgrade` among them."""
_date: tuple[int, str] = (0, "")


def _http_date() -> str:
    """The `Date` of a response, as websockets writes it, made once a second."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, email.utils.formatdate(now, usegmt=True))
    return _date[1]


class _PlainServerProtocol(ServerProtocol):
    """websockets' server side, accepting a plain handshake request without its general
    parse (:func:`_accept_plain`); anything else is websockets' own `accept`."""

    __slots__ = ()

    def accept(self, request: Request) -> Response:
        return _accept_plain(self, request) or super().accept(request)


def _accept_plain(conn: ServerProtocol, request: Request) -> Response | None:
    """websockets' 101 answer to `request`, when the request and the server are plain: one
    `Connection` header listing `upgrade`, `Upgrade: websocket`, one well-formed key,
    version 13, at most one `Origin`, no subprotocol offered, and a server that checks no
    origin and offers no extension or subprotocol. None for anything else (then websockets'
    `accept` checks it, and answers a refusal)."""
    if (
        getattr(request, "method", "GET") != "GET"
        or getattr(request, "protocol", "HTTP/1.1") != "HTTP/1.1"
        or conn.origins is not None
        or conn.available_extensions
        or conn.available_subprotocols
    ):
        return None
    headers = request.headers
    try:
        connection = headers["Connection"]
        upgrade = headers["Upgrade"]
        key = headers["Sec-WebSocket-Key"]
        version = headers["Sec-WebSocket-Version"]
        origin = headers.get("Origin")
    except (KeyError, MultipleValuesError):
        return None
    if (
        version != "13"
        or upgrade.lower() != "websocket"
        or "Sec-WebSocket-Protocol" in headers
        or _WS_KEY.fullmatch(key) is None
        or _UPGRADE_OPTION.fullmatch(connection) is None
    ):
        return None
    conn.accept_called = True
    conn.origin = origin  # type: ignore[assignment]
    conn.extensions = []
    conn.subprotocol = None
    answer = Headers()
    _set_header(answer, "Date", _http_date())
    _set_header(answer, "Upgrade", "websocket")
    _set_header(answer, "Connection", "Upgrade")
    _set_header(answer, "Sec-WebSocket-Accept", accept_key(key))
    return Response(101, "Switching Protocols", answer)


def _drop_handshake_parser(conn: ServerProtocol) -> None:
    """Once open, parse frames with the frame parser that `ServerProtocol.parse` delegates
    to, started afresh: the server's parser keeps the handshake request (its headers) in its
    generator frame for the life of the connection, about 2 KiB. Only between frames, with
    nothing buffered (otherwise the connection keeps the parser it has)."""
    if (
        conn.state is State.OPEN
        and conn.parser_exc is None
        and conn.current_size is None
        and not conn.reader.buffer
    ):
        parser = Protocol.parse(conn)
        next(parser)
        conn.parser = parser


def _pong_payload(chunk: bytes) -> bytes:
    """The payload of an unmasked server pong frame as websockets encodes it (< 126 bytes)."""
    return chunk[2 : 2 + (chunk[1] & 0x7F)]


@functools.cache
def websocket_protocol(
    handshake_timeout: float | None, presence_window: float = 0.0
) -> type[WebSocketProtocol]:
    """:class:`WebSocketProtocol` with its own handshake timeout and presence window
    (uvicorn's `ws=` class)."""
    attributes = {"handshake_timeout": handshake_timeout, "presence_window": presence_window}
    return type("WebSocketProtocol", (WebSocketProtocol,), attributes)


def _http_refusal(status: int, phrase: str, body: str) -> bytes:
    data = body.encode()
    return (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
        + data
    )


class _EarlyAnswers(h11.Connection):
    """The server side of an HTTP/1.1 connection whose answers may come before the request's
    body (a refusal does not read it): such an answer says `Connection: close` when the rest
    of the body is not worth reading (see :data:`DRAIN_BYTES`), else the body is read and
    dropped and the socket kept alive. Closing without saying so would race the client's
    next request on the kept-alive socket."""

    def __init__(self, protocol: H11Protocol, max_incomplete_event_size: int | None) -> None:
        if max_incomplete_event_size is None:
            super().__init__(h11.SERVER)
        else:
            super().__init__(h11.SERVER, max_incomplete_event_size)
        self._protocol = weakref.ref(protocol)

    def send_with_data_passthrough(self, event: h11.Event) -> list[bytes] | None:
        if (
            type(event) is h11.Response
            and self.their_state is h11.SEND_BODY
            and (event.status_code == 408 or not self._drainable())
        ):
            headers = [*event.headers.raw_items(), (b"connection", b"close")]
            event = h11.Response(
                status_code=event.status_code, headers=headers, reason=event.reason
            )
        return super().send_with_data_passthrough(event)

    def _drainable(self) -> bool:
        protocol = self._protocol()
        for name, value in (protocol.headers or []) if protocol is not None else []:
            if name == b"content-length":
                return value.isdigit() and int(value) <= DRAIN_BYTES
        return False


_CONNECTION_UPGRADE = re.compile(rb"\r\nconnection:[^\r\n]*\bupgrade\b")


def _whole_upgrade(data: bytes) -> bool:
    """Whether `data` is a WebSocket upgrade's request head, whole and alone: `GET`, an
    `Upgrade: websocket` and a `Connection: upgrade` header, nothing after the blank line."""
    if not data.startswith(b"GET ") or data.find(b"\r\n\r\n") != len(data) - 4:
        return False
    head = data.lower()
    return b"\r\nupgrade: websocket\r\n" in head and _CONNECTION_UPGRADE.search(head) is not None


_REQUEST_LINE = re.compile(rb"GET ([\x21-\x7e]+) HTTP/1\.1\r\n")
_HEADER_LINES = re.compile(
    rb"(?:[-!#$%&'*+.^_`|~0-9a-zA-Z]+:[\x09\x20-\x7e\x80-\xff]*\r\n)*\r\n"
)  # websockets' own rules for header names and values (http11.py), every line at once
_BODY_HEADERS = frozenset({"transfer-encoding", "content-length"})
_set_header = getattr(Headers, "set_insecure", Headers.__setitem__)
"""websockets' way to add a header it has validated (newer versions), or the checked one."""
_MAX_LINE: int = getattr(http11, "MAX_LINE_LENGTH", 8192)
_MAX_HEADERS: int = getattr(http11, "MAX_NUM_HEADERS", 128)
"""websockets' bounds of a request head (its environment variables may change them)."""


def _parse_head(head: bytes) -> Request | None:
    """The request of a whole upgrade head (:func:`_whole_upgrade`) as websockets' parser
    would have it, for a plain head: an HTTP/1.1 request line with an ASCII path, header lines
    within websockets' bounds (line length, number) and rules (characters of names and
    values), no body. None for anything else: websockets' parser then answers it."""
    line = _REQUEST_LINE.match(head)
    if (
        line is None
        or len(head) > _MAX_LINE - 2  # then no line can be too long
        or head.count(b"\n") - 2 > _MAX_HEADERS
        or _HEADER_LINES.fullmatch(head, line.end()) is None
    ):
        return None
    headers = Headers()
    for field in head[line.end() : -4].split(b"\r\n"):
        name, _, value = field.partition(b":")
        key = name.decode("ascii")
        if key.lower() in _BODY_HEADERS:
            return None
        _set_header(headers, key, value.strip(b" \t").decode("iso-8859-1"))
    return Request(line.group(1).decode("ascii"), headers)


def _lowercase_names(head: bytes) -> bytes:
    """A request head with its header names in lower case, as ASGI wants them in the scope
    (the WebSocket protocol takes them as they come; uvicorn's copy of a request lowers
    them), values untouched."""
    request_line, _, fields = head.partition(b"\r\n")
    lines = [request_line]
    for line in fields.split(b"\r\n"):
        name, colon, value = line.partition(b":")
        lines.append(name.lower() + colon + value)
    return b"\r\n".join(lines)


def _close_unfinished(transport: Any, client: str | None) -> None:
    """A socket's request head did not come by the handshake deadline: log it and close."""
    if not transport.is_closing():
        log_event("connection.handshake_timeout", level=logging.DEBUG, client=client)
        transport.close()


@functools.cache
def handshake_protocol(
    timeout: float, limits: ConnectionLimits | None = None
) -> type[asyncio.Protocol]:
    """uvicorn's h11 HTTP protocol, closing sockets whose request head is not complete within
    `timeout` seconds of connecting (or of the previous response on a kept-alive socket).

    uvicorn itself only times out idle kept-alive sockets, so a client that connects and then
    sends nothing, or its headers one byte at a time, would hold a socket forever. A WebSocket
    upgrade must then be accepted (101) by the same deadline; with `limits`, upgrades still in
    their handshake count toward the connection limits, and one past them is answered 429.

    The class returned holds a socket until its first read: a whole upgrade request
    (:func:`_whole_upgrade`: what browsers and client libraries send) goes to the WebSocket
    protocol as it came (:meth:`WebSocketProtocol.receive_head`), with no HTTP protocol made
    for it; anything else goes to an h11 protocol made then, which takes uvicorn's way.
    """

    class HandshakeProtocol(asyncio.Protocol):
        """A socket until its first read: a whole upgrade head goes to the WebSocket
        protocol, anything else to h11 (:class:`HandshakeTimeoutProtocol`)."""

        def __init__(
            self,
            config: uvicorn.Config,
            server_state: Any,
            app_state: dict[str, Any],
            _loop: asyncio.AbstractEventLoop | None = None,
        ) -> None:
            self.config = config
            self.server_state = server_state
            self.app_state = app_state
            self.loop = _loop or asyncio.get_event_loop()
            self.transport: Any = None
            self._timer: asyncio.TimerHandle | None = None
            self._deadline = 0.0
            self._max_head = config.h11_max_incomplete_event_size or MAX_HEAD

        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.server_state.connections.add(self)  # uvicorn's shutdown closes it
            self._deadline = self.loop.time() + timeout
            self._timer = self.loop.call_at(self._deadline, self._expired)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            self.server_state.connections.discard(self)

        def shutdown(self) -> None:
            self.transport.close()

        def data_received(self, data: bytes) -> None:
            self._disarm()
            self.server_state.connections.discard(self)
            if (
                len(data) <= self._max_head
                and self.config.ws_protocol_class is not None  # uvicorn's `ws="none"`
                and _whole_upgrade(data)
            ):
                self._upgrade(data)
                return
            http = HandshakeTimeoutProtocol(
                self.config, self.server_state, self.app_state, _loop=self.loop
            )
            http.connection_made(self.transport)
            http._arm(self._deadline)
            self.transport.set_protocol(http)
            http.data_received(data)

        def _upgrade(self, head: bytes) -> None:
            """uvicorn's `handle_websocket_upgrade`, with the request's own bytes."""
            reservation = None
            if limits is not None:
                peer = self.transport.get_extra_info("peername")
                try:
                    reservation = limits.reserve(peer[0] if peer else None)
                except Refused as exc:
                    self.transport.write(_http_refusal(429, "Too Many Requests", exc.message))
                    self.transport.close()
                    return
            protocol = self.config.ws_protocol_class(  # type: ignore[call-arg,misc]
                config=self.config, server_state=self.server_state, app_state=self.app_state
            )
            self.transport.set_protocol(protocol)
            if isinstance(protocol, WebSocketProtocol):
                protocol.handshake_deadline(self._deadline)
                protocol.reservation = reservation
                protocol.connection_made(self.transport)
                protocol.receive_head(head)
                return
            if reservation is not None:
                reservation.release()
            protocol.connection_made(self.transport)
            protocol.data_received(_lowercase_names(head))

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _expired(self) -> None:
            self._timer = None
            peer = self.transport.get_extra_info("peername")
            _close_unfinished(self.transport, peer[0] if peer else None)

    class HandshakeTimeoutProtocol(H11Protocol):
        _handshake_timer: asyncio.TimerHandle | None = None
        _deadline = 0.0

        def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
            super().__init__(config, *args, **kwargs)
            self.conn = _EarlyAnswers(self, config.h11_max_incomplete_event_size)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def handle_events(self) -> None:
            super().handle_events()
            if self.conn.our_state is h11.SEND_RESPONSE:  # a request head is complete
                self._disarm()

        def handle_websocket_upgrade(self, event: Any) -> None:
            admitted, reservation = self._admit()
            if admitted:
                super().handle_websocket_upgrade(event)
                self._upgraded(reservation)

        def _admit(self) -> tuple[bool, Reservation | None]:
            """Stop the clock; with `limits`, reserve a place (refused: answered 429)."""
            self._disarm()
            if limits is None:
                return True, None
            try:
                return True, limits.reserve(self.client[0] if self.client else None)
            except Refused as exc:
                self.transport.write(_http_refusal(429, "Too Many Requests", exc.message))
                self.transport.close()
                return False, None

        def _upgraded(self, reservation: Reservation | None) -> None:
            """The WebSocket protocol took the socket: it inherits the deadline and the
            reservation."""
            protocol = self.transport.get_protocol()
            if isinstance(protocol, WebSocketProtocol) and not protocol.handshake_complete:
                protocol.handshake_deadline(self._deadline)
                protocol.reservation = reservation
            elif reservation is not None:
                reservation.release()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            # The rest of a body answered early (uvicorn drops it) and the next request's
            # head must both come within the deadline; pipelined requests may already be in.
            if not self.transport.is_closing() and self.conn.our_state is not h11.SEND_RESPONSE:
                self._arm()

        def _arm(self, deadline: float | None = None) -> None:
            """Close the socket unless a request head is complete by `deadline` (loop time;
            by default `timeout` seconds from now)."""
            self._disarm()
            self._deadline = self.loop.time() + timeout if deadline is None else deadline
            self._handshake_timer = self.loop.call_at(self._deadline, self._expired)

        def _disarm(self) -> None:
            if self._handshake_timer is not None:
                self._handshake_timer.cancel()
                self._handshake_timer = None

        def _expired(self) -> None:
            self._handshake_timer = None
            _close_unfinished(self.transport, self.client[0] if self.client else None)

    return HandshakeProtocol
