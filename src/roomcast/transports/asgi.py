"""The ASGI WebSocket transport: `/api/v1/ws` for uvicorn or any ASGI server.

A raw ASGI callable rather than a framework endpoint, so that it mounts into Starlette,
FastAPI or any ASGI app, and adds nothing per frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

from ..admission import open_session, parse_query_string
from ..codes import CloseCode
from ..connection import Connection, Outbox
from ..node import Node
from ..protocol import close_reason
from ..session import Session
from . import asyncio_tasks

__all__ = [
    "CLOSE_TIMEOUT",
    "DIRECT_EXTENSION",
    "KEEPALIVE_REASON",
    "PENDING_MESSAGE",
    "AsgiConnection",
    "DirectSocket",
    "WebSocketEndpoint",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


CLOSE_TIMEOUT = 2.0
"""Seconds a peer has to answer the server's close frame before the socket is aborted."""

KEEPALIVE_REASON = "keepalive timeout"
"""The close reason (and ``websocket.disconnect`` reason) of a missed pong."""

DIRECT_EXTENSION = "roomcast.direct"
"""The ASGI scope extension offering a :class:`DirectSocket`
(``scope["extensions"][DIRECT_EXTENSION]["protocol"]``): fan-out writes without an await.
:class:`roomcast.transports.uvicorn.WebSocketProtocol` offers it under `roomcast serve`."""


PENDING_MESSAGE = "roomcast.pending"
"""The type of the ASGI message a :class:`DirectSocket` queues when a frame it handed to the
receiver (`receive_directly`) still has work to do: its `pending` is awaited before anything
else is received."""


class DirectSocket(Protocol):
    """What the direct path needs of the server's protocol object."""

    def hold(self, data: str, later: bool = False) -> bool:
        """Write `data`'s text frame at the end of this event-loop iteration (with `later`:
        within the presence window, in order with the frames after it); False (and nothing
        held) while the socket takes no more (above its high-water mark)."""

    def hold_more(self, data: str) -> bool:
        """Add `data`'s text frame to the frames held, written when they are; False (and
        nothing held) when none are held or the socket takes no more. Nothing can be queued
        behind frames held (a queued frame writes them first), so this keeps the order."""

    def hold_more_all(self, sockets: list[DirectSocket | None], data: str) -> list[int]:
        """:meth:`hold_more` on each of `sockets` (this one's kind, or None), in one loop;
        the positions of those that did not take it (None, nothing held, or full)."""

    def flush(self) -> None:
        """Write the frames held now."""

    def discard(self) -> None:
        """Drop the frames held."""

    @property
    def write_buffer_size(self) -> int:
        """Bytes in the socket's write buffer."""

    def receive_directly(self, receiver: Callable[[str | bytes], object | None] | None) -> None:
        """Hand frames to `receiver` in the read's callback while the application waits in
        `receive()` with nothing queued; what it returns, unless None, is queued as a
        :data:`PENDING_MESSAGE` (None stops it)."""


_FRAMES_PER_TURN = 32
"""Frames of one connection handled before the endpoint lets the event loop run others."""


def _nothing() -> None:
    """The default callback (one function, not a closure per connection)."""


class AsgiConnection:
    """A :class:`~roomcast.connection.Connection` over an ASGI `send` callable.

    Under `roomcast serve` the scope offers uvicorn's protocol object (see
    :data:`DIRECT_EXTENSION`): while nothing is queued and the
    transport is below its high-water mark, `send` writes the frame to the socket at once, with
    no task switch; otherwise the frame waits in the :class:`~roomcast.connection.Outbox`,
    whose overflow past `max_bytes` closes the connection (4408). Elsewhere every frame goes
    through the outbox and the ASGI `send` callable.
    """

    __slots__ = ("_asgi_send", "_direct", "on_closing", "on_overflow", "outbox")

    def __init__(self, asgi_send: Send, max_bytes: int, direct: DirectSocket | None = None) -> None:
        self._asgi_send = asgi_send
        self._direct = direct
        self.on_overflow: Callable[[], None] = _nothing
        self.on_closing: Callable[[], None] = _nothing
        self.outbox = Outbox(self._write, self._close, max_bytes, self._overflow)

    def _overflow(self) -> None:
        self.on_overflow()

    def release(self) -> None:
        """The connection is done: drop the callbacks that refer back to its owners (the
        session's, the outbox's), so that it is freed without the garbage collector."""
        self.on_overflow = _nothing
        self.on_closing = _nothing
        self.outbox.detach()

    async def _write(self, data: str) -> None:
        await self._asgi_send({"type": "websocket.send", "text": data})

    async def _close(self, code: int, reason: str) -> None:
        # A close frame carries at most 123 bytes of reason (UTF-8): cut on a character.
        message = {"type": "websocket.close", "code": code, "reason": close_reason(reason)}
        await self._asgi_send(message)

    def send(self, data: str) -> None:
        """Write a text frame now when nothing is queued, else queue it."""
        direct = self._direct
        outbox = self.outbox
        # Straight to the socket while the transport takes it (below its high-water mark);
        # once it pushes back, frames queue in the outbox, which bounds them (4408). The
        # frames of one event-loop iteration go out in one write at its end: when messages
        # come faster than one per iteration, a member costs one system call, not one each.
        if direct is not None and outbox.idle and direct.hold(data):
            return
        self.flush()  # what was written directly goes first
        outbox.send(data)

    def send_later(self, data: str) -> None:
        """Like :meth:`send`, for a frame that may wait a few milliseconds (presence) to share
        its write with the frames after it; nothing overtakes it, it overtakes nothing."""
        direct = self._direct
        if direct is not None:
            # Frames held already: one more for the same write (a burst of joins), with no
            # look at the outbox, which cannot have queued anything behind them.
            if direct.hold_more(data):
                return
            if self.outbox.idle and direct.hold(data, True):
                return
        self.flush()
        self.outbox.send(data)

    @staticmethod
    def send_later_to_all(connections: list[Connection], data: str) -> None:
        """:meth:`send_later` on each of `connections`: those whose direct socket holds
        frames already take this one in one loop of the socket's kind (`hold_more_all`),
        the others (and connections of another class) one by one."""
        first = connections[0]
        direct = first._direct if type(first) is AsgiConnection else None
        if direct is None:
            for connection in connections:
                connection.send_later(data)
            return
        sockets = [c._direct if type(c) is AsgiConnection else None for c in connections]
        for i in direct.hold_more_all(sockets, data):
            connections[i].send_later(data)

    def flush(self) -> None:
        """Write the frames held for the end of this event-loop iteration now."""
        if self._direct is not None:
            self._direct.flush()

    def close(self, code: int, reason: str = "") -> None:
        """Close after the queued frames."""
        self.flush()
        self.outbox.close(code, reason)
        self.on_closing()

    def abort(self, code: int, reason: str = "") -> None:
        """Drop the queued frames and close."""
        if self._direct is not None:
            self._direct.discard()
        self.outbox.abort(code, reason)
        self.on_closing()

    @property
    def buffered(self) -> int:
        """Characters queued and not yet written, plus bytes in the socket's write buffer."""
        direct = self._direct
        if direct is None:
            return self.outbox.buffered
        return self.outbox.buffered + direct.write_buffer_size

    def allow(self, extra: int) -> None:
        """Let the outbound buffer take `extra` more bytes until it drains (a replay)."""
        self.outbox.allow(extra)

    async def wait_closed(self, timeout: float) -> None:
        """Wait (bounded) for the writer to send the close frame."""
        await self.outbox.wait_closed(timeout)


class WebSocketEndpoint:
    """The ASGI app serving one node's WebSocket connections."""

    def __init__(self, node: Node) -> None:
        self.node = node

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Accept the upgrade, join, pump frames into the session, leave."""
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        node = self.node
        headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])
        }
        await send({"type": "websocket.accept"})
        direct = scope.get("extensions", {}).get(DIRECT_EXTENSION, {}).get("protocol")
        connection = AsgiConnection(send, node.settings.outbound_buffer, direct)
        connection.outbox.start_on_demand()
        query = parse_query_string(scope.get("query_string", b""))
        client = scope.get("client")
        session = await open_session(
            node, connection, query, headers, client[0] if client else None
        )
        del headers, query  # this frame lives as long as the connection: keep it small
        if session is None:
            await self._drain_until_closed(receive, connection)
            connection.release()
            return
        connection.on_overflow = session.overflow
        reason = "closed"
        try:
            async with asyncio.timeout(None) as bound:
                # Once the server closes the connection, the peer gets a bounded time to go;
                # a server that never reports the disconnect cannot keep this task forever.
                loop = asyncio.get_running_loop()
                connection.on_closing = lambda: bound.reschedule(loop.time() + CLOSE_TIMEOUT + 1.0)
                if session.closing:
                    connection.on_closing()
                code, text = await self._pump(receive, session, direct)
                if code == CloseCode.KEEPALIVE_TIMEOUT and text == KEEPALIVE_REASON:
                    session.keepalive_timeout()
                    reason = "keepalive_timeout"
        except TimeoutError:
            reason = "close_timeout"
        finally:
            connection.on_closing = _nothing
            await session.leave(reason)
            if not connection.outbox.closing:
                connection.close(CloseCode.NORMAL)
            task = connection.outbox.task
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            connection.release()

    @staticmethod
    async def _pump(
        receive: Receive, session: Session, direct: DirectSocket | None
    ) -> tuple[int, str]:
        """Feed frames to the session until the disconnect; returns its code and reason.

        With a direct socket, a frame that arrives while this task waits in `receive()` is
        handled in the socket's read callback up to its first wait, as this task; the rest of
        it (a broker round trip) comes back here as a pending message.
        """
        if direct is not None and asyncio_tasks.AVAILABLE:
            direct.receive_directly(_DirectReceiver(session))
        try:
            handled = 0
            while True:
                message = await receive()
                handled += 1
                if handled == _FRAMES_PER_TURN:
                    # A server may queue many frames of one read: let other connections run.
                    handled = 0
                    await asyncio.sleep(0)
                kind = message["type"]
                if kind == "websocket.receive":
                    text = message.get("text")
                    if text is not None:
                        await session.receive(text)
                    else:
                        session.receive_binary()
                elif kind == PENDING_MESSAGE:
                    await message["pending"]
                elif kind == "websocket.disconnect":
                    return int(message.get("code", 1005)), str(message.get("reason") or "")
        finally:
            if direct is not None:
                direct.receive_directly(None)

    @staticmethod
    async def _drain_until_closed(receive: Receive, connection: AsgiConnection) -> None:
        """After a refusal, let the error frame and close go out; read until the peer closes."""
        with contextlib.suppress(asyncio.TimeoutError):
            async with asyncio.timeout(5):
                while (await receive())["type"] != "websocket.disconnect":
                    pass
        await connection.wait_closed(1.0)


class _DirectReceiver:
    """The receiver of a direct socket: runs `Session.handle` in a context copied from the
    connection's task (which waits in `receive()` meanwhile), then what it left to do, up to
    its first wait, as that task."""

    __slots__ = ("_context", "_loop", "_session", "_task")

    def __init__(self, session: Session) -> None:
        self._session = session
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._context = contextvars.copy_context()

    def __call__(self, data: str | bytes) -> object | None:
        if isinstance(data, str):
            rest = self._context.run(self._session.handle, data)
            if rest is None:
                return None
            return asyncio_tasks.first_step(self._loop, self._task, self._context, rest)
        self._session.receive_binary()
        return None
