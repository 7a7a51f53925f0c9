"""The ASGI WebSocket transport: `/api/v1/ws` for uvicorn or any ASGI server.

A raw ASGI callable rather than a framework endpoint, so that it mounts into Starlette,
FastAPI or any ASGI app, and adds nothing per frame.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

from ..codes import CloseCode
from ..connection import Outbox
from ..node import Node
from ..session import Session, open_session

__all__ = ["AsgiConnection", "WebSocketEndpoint"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class AsgiConnection:
    """A :class:`~roomcast.connection.Connection` over an ASGI `send` callable."""

    __slots__ = ("_asgi_send", "on_overflow", "outbox")

    def __init__(self, asgi_send: Send, max_bytes: int) -> None:
        self._asgi_send = asgi_send
        self.on_overflow: Callable[[], None] = lambda: None
        self.outbox = Outbox(self._write, self._close, max_bytes, self._overflow)

    def _overflow(self) -> None:
        self.on_overflow()

    async def _write(self, data: str) -> None:
        await self._asgi_send({"type": "websocket.send", "text": data})

    async def _close(self, code: int, reason: str) -> None:
        await self._asgi_send({"type": "websocket.close", "code": code, "reason": reason})

    def send(self, data: str) -> None:
        """Queue a text frame."""
        self.outbox.send(data)

    def close(self, code: int, reason: str = "") -> None:
        """Close after the queued frames."""
        self.outbox.close(code, reason)

    def abort(self, code: int, reason: str = "") -> None:
        """Drop the queued frames and close."""
        self.outbox.abort(code, reason)

    @property
    def buffered(self) -> int:
        """Characters queued and not yet written."""
        return self.outbox.buffered

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
        connection = AsgiConnection(send, node.settings.outbound_buffer)
        connection.outbox.start()
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"),
                               keep_blank_values=True))
        client = scope.get("client")
        session = await open_session(
            node, connection, query, headers, client[0] if client else None
        )
        if session is None:
            await self._drain_until_closed(receive, connection)
            return
        connection.on_overflow = session.overflow
        try:
            await self._pump(receive, session)
        finally:
            await session.leave()
            if not connection.outbox.closing:
                connection.close(CloseCode.NORMAL)
            task = connection.outbox.task
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    @staticmethod
    async def _pump(receive: Receive, session: Session) -> None:
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.receive":
                text = message.get("text")
                if text is not None:
                    await session.receive(text)
                else:
                    session.receive_binary()
            elif kind == "websocket.disconnect":
                return

    @staticmethod
    async def _drain_until_closed(receive: Receive, connection: AsgiConnection) -> None:
        """After a refusal, let the error frame and close go out; read until the peer closes."""
        with contextlib.suppress(asyncio.TimeoutError):
            async with asyncio.timeout(5):
                while (await receive())["type"] != "websocket.disconnect":
                    pass
        await connection.wait_closed(1.0)
