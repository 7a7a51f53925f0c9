"""Helpers of the client tests: a TCP proxy that can cut or freeze connections, and waits."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from roomcast.client import Backoff, ClientState, Frame

T = TypeVar("T")
WAIT = 10.0


class Proxy:
    """A TCP proxy on 127.0.0.1 in front of a server port, controlled by the test.

    `cut()` drops every relayed connection at once (no close frame: a network failure);
    `refuse()` makes new connections fail until `accept()`; `freeze()` keeps the open
    connections open but stops relaying their bytes (a dead peer that keepalive must notice).
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.accepting = True
        self.connections = 0
        self._links: set[asyncio.StreamWriter] = set()
        self._frozen: set[asyncio.StreamWriter] = set()
        self._websockets: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def start(self) -> Proxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.accepting:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._links.update((writer, up_writer))
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer, (writer, up_writer)), self._pipe(up_reader, writer)
            )
        finally:
            for w in (writer, up_writer):
                self._links.discard(w)
                self._websockets.discard(w)
                w.transport.abort()

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        link: tuple[asyncio.StreamWriter, ...] = (),
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                if link and b"upgrade: websocket" in data.lower():
                    self._websockets.update(link)
                if writer not in self._frozen:
                    writer.write(data)
                    await writer.drain()
        if writer not in self._frozen:  # a frozen link does not pass on the end either
            writer.transport.abort()

    def cut(self) -> None:
        """Drop every open connection, both ways, without a close frame."""
        for writer in list(self._links):
            writer.transport.abort()

    def refuse(self) -> None:
        """Fail new connections until `accept()`."""
        self.accepting = False

    def accept(self) -> None:
        """Relay new connections again."""
        self.accepting = True

    def freeze(self, *, websockets_only: bool = False) -> None:
        """Stop relaying bytes of the open connections (both ways), keeping them open; new
        connections are relayed as usual. `websockets_only` spares plain HTTP connections
        (a browser's keep-alive connections for the page's files)."""
        self._frozen.update(self._links & self._websockets if websockets_only else self._links)

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class StateLog:
    """An `on_state` callback that records every state and lets a test wait for one."""

    def __init__(self) -> None:
        self.states: list[ClientState] = []
        self._changed = asyncio.Condition()

    async def __call__(self, state: ClientState) -> None:
        async with self._changed:
            self.states.append(state)
            self._changed.notify_all()

    async def wait(self, state: ClientState, count: int = 1, timeout: float = WAIT) -> None:
        """Wait until `state` was entered `count` times in all."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: self.states.count(state) >= count)


async def poll(check: Callable[[], Awaitable[T]], timeout: float = WAIT) -> T:
    """Call `check` until it returns a truthy value (bounded by `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)  # polled with a deadline; there is no event to await


FAST = Backoff(min_delay=0.05, max_delay=0.3, jitter=0.05)
"""Short reconnect delays, so that tests of reconnects stay quick."""


class Collector:
    """A frame handler that records frames and lets a test wait for a number of them."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self._changed = asyncio.Condition()

    async def __call__(self, frame: Frame) -> None:
        async with self._changed:
            self.frames.append(frame)
            self._changed.notify_all()

    @property
    def offsets(self) -> list[int | None]:
        return [f.offset for f in self.frames]

    async def wait(self, count: int, timeout: float = WAIT) -> list[Frame]:
        """Wait until at least `count` frames arrived; returns them all."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: len(self.frames) >= count)
        return self.frames


def welcome(
    offset: int = 0,
    epoch: str = "e1",
    recovered: bool | None = None,
    members: tuple[str, ...] = ("alice",),
) -> str:
    """A welcome frame as the server sends it."""
    payload: dict[str, Any] = {
        "connectionId": "c",
        "username": "alice",
        "roomID": "r1",
        "members": list(members),
        "epoch": epoch,
        "offset": offset,
    }
    if recovered is not None:
        payload["recovered"] = recovered
    return json.dumps({"topic": "welcome", "payload": payload})


def message(offset: int, text: str = "m") -> str:
    """A room message frame."""
    return json.dumps(
        {"topic": "chat", "payload": {"text": text}, "room": "r1", "from": "bob", "offset": offset}
    )


Script = Callable[[ServerConnection, int], Awaitable[None]]


class FakeServer:
    """An in-process WebSocket server playing a script per connection (numbered from 0); it
    records each connection's query and Authorization header."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.queries: list[dict[str, str]] = []
        self.tokens: list[str | None] = []
        self.connected = asyncio.Condition()
        self._server: Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        port = next(iter(self._server.sockets)).getsockname()[1]
        return f"ws://127.0.0.1:{port}"

    async def __aenter__(self) -> FakeServer:
        self._server = await serve(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        query = {k: v[0] for k, v in parse_qs(urlsplit(ws.request.path).query).items()}
        number = len(self.queries)
        async with self.connected:
            self.queries.append(query)
            self.tokens.append(ws.request.headers.get("Authorization"))
            self.connected.notify_all()
        with contextlib.suppress(ConnectionClosed):
            await self.script(ws, number)

    async def wait_connections(self, count: int, timeout: float = WAIT) -> None:
        """Wait until `count` connections were made."""
        async with asyncio.timeout(timeout), self.connected:
            await self.connected.wait_for(lambda: len(self.queries) >= count)
