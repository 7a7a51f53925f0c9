"""A TCP proxy on 127.0.0.1 in front of roomcast nodes that cuts WebSocket connections at
chosen moments: after forwarding a client's publish, or instead of forwarding an `ack`.

It reads the WebSocket frames that pass (it removes `Sec-WebSocket-Extensions` from the
handshake, so that no compression hides them), and counts the client frames that carry a
`key` and the server's `ack` frames over every connection; `cut_after_publish(n)` and
`cut_before_ack(n)` say, for the n-th of each (from 1), whether to cut the connection there.
A cut aborts the client's side (as a network failure would) and closes the server's side
after what was forwarded, so the server still handles a publish it was given. Each new
connection goes to the next of the target ports in turn.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import orjson

Rule = Callable[[int], bool]

_HEAD_END = b"\r\n\r\n"
_TEXT = 1


def every(n: int) -> Rule:
    """Cut at every `n`-th occasion."""
    return lambda count: count % n == 0


def never(count: int) -> bool:
    """Never cut."""
    return False


class _Cut(Exception):
    """The connection is to be cut here."""


class CuttingProxy:
    """A proxy from `port` (chosen at `start`) to `targets` on 127.0.0.1."""

    def __init__(
        self,
        targets: list[int],
        *,
        cut_after_publish: Rule = never,
        cut_before_ack: Rule = never,
    ) -> None:
        self.targets = targets
        self.cut_after_publish = cut_after_publish
        self.cut_before_ack = cut_before_ack
        self.port = 0
        self.connections = 0
        self.publishes = 0
        self.acks = 0
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def start(self) -> CuttingProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> CuttingProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        target = self.targets[self.connections % len(self.targets)]
        self.connections += 1
        server_w: asyncio.StreamWriter | None = None
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", target)
            head = await client_r.readuntil(_HEAD_END)
            server_w.write(_without_extensions(head))
            answer = await server_r.readuntil(_HEAD_END)
            client_w.write(answer)
            upstream = asyncio.ensure_future(self._pump(client_r, server_w, upstream=True))
            downstream = asyncio.ensure_future(self._pump(server_r, client_w, upstream=False))
            done, pending = await asyncio.wait(
                (upstream, downstream), return_when=asyncio.FIRST_COMPLETED
            )
            for other in pending:
                other.cancel()
            cut = any(not t.cancelled() and isinstance(t.exception(), _Cut) for t in done)
            if cut:
                self.cuts += 1
                client_w.transport.abort()
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            client_w.transport.abort()
        finally:
            if server_w is not None:
                server_w.close()
            client_w.close()
            self._tasks.discard(task)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upstream: bool
    ) -> None:
        """Forward frames one by one until the end of the stream or a cut."""
        while True:
            try:
                frame, opcode, payload = await _read_frame(reader)
            except asyncio.IncompleteReadError:
                return
            if opcode == _TEXT and not upstream and _topic(payload) == "ack":
                self.acks += 1
                if self.cut_before_ack(self.acks):
                    raise _Cut
            writer.write(frame)
            await writer.drain()
            if opcode == _TEXT and upstream and _has_key(payload):
                self.publishes += 1
                if self.cut_after_publish(self.publishes):
                    raise _Cut


async def _read_frame(reader: asyncio.StreamReader) -> tuple[bytes, int, bytes]:
    """One WebSocket frame: its bytes as they came, its opcode and its unmasked payload."""
    header = await reader.readexactly(2)
    opcode, length = header[0] & 0x0F, header[1] & 0x7F
    masked = bool(header[1] & 0x80)
    extended = b""
    if length == 126:
        extended = await reader.readexactly(2)
    elif length == 127:
        extended = await reader.readexactly(8)
    if extended:
        length = int.from_bytes(extended, "big")
    mask = await reader.readexactly(4) if masked else b""
    data = await reader.readexactly(length)
    payload = data
    if masked:
        key = int.from_bytes((mask * (length // 4 + 1))[:length], "big")
        payload = (int.from_bytes(data, "big") ^ key).to_bytes(length, "big")
    return header + extended + mask + data, opcode, payload


def _without_extensions(head: bytes) -> bytes:
    lines = head.split(b"\r\n")
    return b"\r\n".join(
        line for line in lines if not line.lower().startswith(b"sec-websocket-extensions:")
    )


def _frame(payload: bytes) -> dict[str, object] | None:
    with contextlib.suppress(orjson.JSONDecodeError):
        data = orjson.loads(payload)
        if isinstance(data, dict):
            return data
    return None


def _topic(payload: bytes) -> object:
    frame = _frame(payload)
    return None if frame is None else frame.get("topic")


def _has_key(payload: bytes) -> bool:
    frame = _frame(payload)
    return frame is not None and "key" in frame
