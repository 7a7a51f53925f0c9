"""Issue 14 item 3: pings from a client that never reads cannot grow the server's memory:
pongs go out only while the peer reads, and the server stops reading it meanwhile."""

from __future__ import annotations

import asyncio
import socket
import time

from tests.harness import ServerProcess
from tests.security.raw import client_frame, upgrade_request

PING = client_frame(0x9, b"p" * 125)
ATTEMPT = 64 * 1024 * 1024


def _ping_until_blocked(port: int) -> tuple[int, bytes]:
    """Upgrade, then send pings without reading until the socket has taken nothing for 2 s
    or `ATTEMPT` bytes went out; then read what the server sent for 3 s."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    sock.sendall(upgrade_request())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101 ")
    burst = PING * 512
    sent = 0
    sock.settimeout(2)
    try:
        while sent < ATTEMPT:
            sock.sendall(burst)
            sent += len(burst)
    except TimeoutError:
        pass
    received = b""
    sock.settimeout(0.5)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            continue
        if not chunk:
            break
        received += chunk
    sock.close()
    return sent, received


async def test_ping_flood_without_reading_is_not_read_on(server: ServerProcess) -> None:
    """A client sending 64 MiB of pings and reading nothing is stopped being read long before
    (so the server holds at most a buffer of pongs), and gets pongs once it reads."""
    sent, received = await asyncio.to_thread(_ping_until_blocked, server.port)
    assert sent < ATTEMPT
    assert b"\x8a\x7d" + b"p" * 125 in received  # a pong for one of its pings
