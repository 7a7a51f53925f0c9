"""Helpers for the reliability tests: publishers, resuming clients, a raw-socket client.

Every wait is bounded; nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
import websockets

from tests.harness import (
    RECV_TIMEOUT,
    Client,
    ServerProcess,
)
from tests.security.raw import client_frame


def broker_args(broker: str) -> list[str]:
    """The `--broker` flags for a broker URL."""
    return ["--broker", broker]


async def publish(http: httpx.AsyncClient, room: str, payload: Any, topic: str = "news") -> int:
    """Publish one message through the HTTP API; returns its offset."""
    response = await http.post(
        f"/api/v1/rooms/{room}/messages", json={"topic": topic, "payload": payload}
    )
    assert response.status_code == 202, response.text
    return int(response.json()["offset"])


@dataclass
class Publisher:
    """Publishes numbered messages to a room through the HTTP API of whichever node answers.

    `offsets` collects every offset the API answered with, so a test knows what was published.
    """

    urls: Callable[[], Sequence[str]]
    room: str
    concurrency: int = 1
    payload_size: int = 16
    offsets: list[int] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    published: asyncio.Condition = field(default_factory=asyncio.Condition)
    failures: int = 0

    async def run(self, total: int | None = None) -> None:
        """Publish until `stop` is set (or `total` messages were published)."""
        async with httpx.AsyncClient(timeout=RECV_TIMEOUT) as http:
            await asyncio.gather(*(self._worker(http, i, total) for i in range(self.concurrency)))

    async def _worker(self, http: httpx.AsyncClient, worker: int, total: int | None) -> None:
        pad = "x" * self.payload_size
        turn = worker
        while not self.stop.is_set() and (total is None or len(self.offsets) < total):
            urls = self.urls()
            url = urls[turn % len(urls)]
            turn += 1
            try:
                response = await http.post(
                    f"{url}/api/v1/rooms/{self.room}/messages",
                    json={"topic": "news", "payload": {"w": worker, "pad": pad}},
                )
            except httpx.HTTPError:
                # A node going away: try the next one. Bounded by the test's own timeout.
                self.failures += 1
                await asyncio.sleep(0.01)
                continue
            if response.status_code != 202:
                self.failures += 1
                await asyncio.sleep(0.01)
                continue
            async with self.published:
                self.offsets.append(int(response.json()["offset"]))
                self.published.notify_all()

    async def wait_count(self, count: int, timeout: float = 20.0) -> None:
        """Wait until at least `count` messages were published."""
        async with asyncio.timeout(timeout), self.published:
            await self.published.wait_for(lambda: len(self.offsets) >= count)


class ResumingClient:
    """A member that reconnects with `since`+`epoch` and records every offset it sees once.

    Args:
        urls: returns the WebSocket URLs of the nodes to try, in order.
        username: the member's name.
        room: the room.
    """

    def __init__(self, urls: Callable[[], Sequence[str]], username: str, room: str) -> None:
        self.urls = urls
        self.username = username
        self.room = room
        self.epoch: str | None = None
        self.last = 0
        self.seen: list[int] = []
        self.welcomes: list[dict[str, Any]] = []
        self.closes: list[int | None] = []
        self.client: Client | None = None
        self.updated = asyncio.Condition()

    async def connect(self, timeout: float = 10.0) -> dict[str, Any]:
        """Connect to the first node that accepts, resuming when an epoch is known.

        A refusal with 4409 means the server has not yet processed the previous connection's
        close (its leave is asynchronous): the nodes are tried again until `timeout`.
        """
        params: dict[str, Any] = {}
        if self.epoch is not None:
            params = {"since": self.last, "epoch": self.epoch}
        errors: list[str] = []
        try:
            return await asyncio.wait_for(self._connect(params, errors), timeout)
        except TimeoutError:
            raise AssertionError(f"{self.username}: no node accepted: {errors[-3:]}") from None

    async def _connect(self, params: dict[str, Any], errors: list[str]) -> dict[str, Any]:
        while True:
            for url in self.urls():
                try:
                    client = await Client.connect(url, self.username, self.room, **params)
                    welcome = await client.recv()
                except (OSError, websockets.WebSocketException, TimeoutError) as exc:
                    errors.append(repr(exc))
                    continue
                if welcome["topic"] != "welcome":
                    # Refused (the node is shutting down, or the old connection is still
                    # listed): try the next node, then all again.
                    errors.append(repr(welcome))
                    with contextlib.suppress(Exception):
                        await client.close()
                    continue
                payload: dict[str, Any] = welcome["payload"]
                if self.epoch is None:
                    self.epoch = payload["epoch"]
                    self.last = payload["offset"]
                self.welcomes.append(payload)
                self.client = client
                return payload
            # Nothing to wait on for a leave processed elsewhere: retry shortly, bounded.
            await asyncio.sleep(0.05)

    async def run(self, stop: asyncio.Event, reconnects: int = 10) -> None:
        """Read until `stop`; on a close, reconnect (at most `reconnects` times)."""
        while True:
            if self.client is None:
                await self.connect()
            assert self.client is not None
            try:
                while True:
                    raw = await self.client.ws.recv()
                    frame = orjson.loads(raw)
                    offset = frame.get("offset")
                    if offset is not None:
                        async with self.updated:
                            self.seen.append(offset)
                            self.last = offset
                            self.updated.notify_all()
            except websockets.ConnectionClosed:
                self.closes.append(self.client.ws.close_code)
                self.client = None
                if stop.is_set():
                    return
                reconnects -= 1
                assert reconnects >= 0, f"{self.username}: too many reconnects {self.closes}"

    async def wait_offset(self, offset: int, timeout: float = 20.0) -> None:
        """Wait until this client has seen `offset`."""
        async with asyncio.timeout(timeout), self.updated:
            await self.updated.wait_for(lambda: self.last >= offset)

    def assert_exactly_once(self, first: int, last: int) -> None:
        """Every offset from `first` to `last` was seen once, in order."""
        assert self.seen == list(range(first, last + 1)), (
            f"{self.username}: gaps or duplicates: "
            f"{_describe(self.seen, first, last)}; closes {self.closes}"
        )
        assert all(w.get("recovered", True) for w in self.welcomes), self.welcomes


def _describe(seen: list[int], first: int, last: int) -> str:
    expected = set(range(first, last + 1))
    missing = sorted(expected - set(seen))
    dupes = sorted({o for o in seen if seen.count(o) > 1})
    return f"missing {missing[:20]} duplicated {dupes[:20]} ({len(seen)} seen)"


async def poll_until(predicate: Callable[[], bool], timeout: float, every: float = 0.1) -> None:
    """Poll `predicate` until it holds, for state with no event to wait on (a gauge, a file
    descriptor count); fails after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(every)


def metric(server: ServerProcess, name: str) -> float:
    """One sample of the node's Prometheus text (0 when absent)."""
    with server.http() as http:
        text = http.get("/metrics").text
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


# A WebSocket client written by hand, to do what well-behaved clients never do: stop reading,
# never answer pings.


class RawClient:
    """A WebSocket connection over a plain socket: handshake by hand, frames by hand."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    @classmethod
    async def connect(
        cls,
        server: ServerProcess,
        username: str,
        room: str,
        rcvbuf: int | None = None,
        **params: Any,
    ) -> RawClient:
        """Open the socket (with a small receive buffer when asked) and do the handshake."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(RECV_TIMEOUT):
            await loop.sock_connect(sock, ("127.0.0.1", server.port))
            key = base64.b64encode(os.urandom(16)).decode()
            query = urlencode({"username": username, "roomID": room, **params})
            request = (
                f"GET /api/v1/ws?{query} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            await loop.sock_sendall(sock, request.encode())
            client = cls(sock)
            while b"\r\n\r\n" not in client.buffer:
                chunk = await loop.sock_recv(sock, 4096)
                assert chunk, "connection closed during the handshake"
                client.buffer += chunk
        head, _, client.buffer = client.buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return client

    async def _fill(self, size: int) -> None:
        loop = asyncio.get_running_loop()
        while len(self.buffer) < size:
            chunk = await loop.sock_recv(self.sock, 65536)
            if not chunk:
                raise ConnectionResetError("connection closed")
            self.buffer += chunk

    async def read_frame(self) -> tuple[int, bytes]:
        """One frame from the server: (opcode, payload). Raises ConnectionError at EOF."""
        await self._fill(2)
        opcode = self.buffer[0] & 0x0F
        length = self.buffer[1] & 0x7F
        header = 2
        if length == 126:
            await self._fill(4)
            length = struct.unpack("!H", self.buffer[2:4])[0]
            header = 4
        elif length == 127:
            await self._fill(10)
            length = struct.unpack("!Q", self.buffer[2:10])[0]
            header = 10
        await self._fill(header + length)
        payload = self.buffer[header : header + length]
        self.buffer = self.buffer[header + length :]
        return opcode, payload

    async def send_frame(self, opcode: int, payload: bytes) -> None:
        """Send one masked frame."""
        await asyncio.get_running_loop().sock_sendall(self.sock, client_frame(opcode, payload))

    async def send_text(self, frame: Any) -> None:
        """Send a JSON text frame."""
        await self.send_frame(0x1, orjson.dumps(frame))

    async def read_until_close(
        self, timeout: float = RECV_TIMEOUT, answer_pings: bool = False
    ) -> tuple[int | None, int]:
        """Read until the close frame; returns (close code or None if the connection was
        dropped without one, text frames seen)."""
        texts = 0
        async with asyncio.timeout(timeout):
            while True:
                try:
                    opcode, payload = await self.read_frame()
                except ConnectionError:
                    return None, texts
                if opcode == 0x8:
                    return (struct.unpack("!H", payload[:2])[0] if payload else 1005), texts
                if opcode == 0x1:
                    texts += 1
                elif opcode == 0x9 and answer_pings:
                    await self.send_frame(0xA, payload)

    def close(self) -> None:
        """Drop the socket."""
        self.sock.close()


# Connection churn for the soak run (tests/integration/test_soak.py, bench/soak.py).


@dataclass
class ChurnStats:
    """What a churn run did."""

    sessions: int = 0
    dropped: int = 0
    sent: int = 0
    acked: int = 0
    received: int = 0
    published: int = 0


async def churn(
    ws_urls: Sequence[str],
    http_urls: Sequence[str],
    *,
    seconds: float,
    workers: int = 20,
    rooms: int = 10,
    frames: int = 5,
    seed: int = 1,
) -> ChurnStats:
    """Members join random rooms on random nodes, send `frames` acknowledged frames, read what
    comes, then leave (one in four by dropping the TCP connection without a close); an HTTP
    publisher publishes to random rooms meanwhile. Runs for `seconds`."""
    import random

    stats = ChurnStats()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds

    async def member(worker: int) -> None:
        rng = random.Random(seed * 1000 + worker)
        n = 0
        while loop.time() < deadline:
            n += 1
            room = f"soak-{rng.randrange(rooms)}"
            # An unbounded incoming queue: this client does not read every frame before it
            # closes, and a paused reader would not see the server's close reply.
            query = urlencode({"username": f"w{worker}-{n}", "roomID": room})
            client = Client(
                await websockets.connect(
                    f"{rng.choice(list(ws_urls))}?{query}",
                    open_timeout=RECV_TIMEOUT,
                    max_queue=None,
                )
            )
            await client.join()
            stats.sessions += 1
            for i in range(frames):
                await client.send({"topic": "chat", "payload": {"n": i}, "id": i})
                stats.sent += 1
            acked = 0
            async with asyncio.timeout(RECV_TIMEOUT * 2):
                while acked < frames:
                    frame = await client.recv()
                    if frame["topic"] == "ack":
                        acked += 1
                    elif "offset" in frame:
                        stats.received += 1
            stats.acked += acked
            if rng.random() < 0.25:
                transport = client.ws.transport
                transport.abort()
                stats.dropped += 1
                with contextlib.suppress(Exception):
                    await client.ws.wait_closed()
            else:
                await client.close()

    async def publisher() -> None:
        rng = random.Random(seed)
        async with httpx.AsyncClient(timeout=RECV_TIMEOUT) as http:
            while loop.time() < deadline:
                url = rng.choice(list(http_urls))
                room = f"soak-{rng.randrange(rooms)}"
                response = await http.post(
                    f"{url}/api/v1/rooms/{room}/messages",
                    json={"topic": "news", "payload": {"x": 1}},
                )
                assert response.status_code == 202, response.text
                stats.published += 1

    await asyncio.gather(publisher(), *(member(w) for w in range(workers)))
    return stats


def rss_kib(pid: int) -> int:
    """The process's resident set size in KiB (Linux)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")
