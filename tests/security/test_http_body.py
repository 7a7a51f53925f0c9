"""Issue 14 items 11 and 15: an HTTP body is refused from its Content-Length, must arrive in
time, and a shutdown during one logs no traceback."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

from tests.harness import ServerProcess

HEAD = (
    "POST /api/v1/rooms/body-room/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    "Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
)


async def _open(
    server: ServerProcess, length: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(HEAD.format(length=length).encode())
    await writer.drain()
    return reader, writer


async def test_oversized_content_length_is_413_before_the_body(server: ServerProcess) -> None:
    """Content-Length of 50 MB: 413 at once, with no byte of the body sent."""
    reader, writer = await _open(server, 50_000_000)
    async with asyncio.timeout(5):
        status = await reader.readline()
    assert status.startswith(b"HTTP/1.1 413 ")
    writer.close()


async def _response(reader: asyncio.StreamReader) -> tuple[bytes, dict[bytes, bytes]]:
    """One HTTP/1.1 response read off `reader`: its status line and (lowercased) headers;
    the body (by Content-Length) is read and dropped."""
    async with asyncio.timeout(5):
        status = await reader.readline()
        headers: dict[bytes, bytes] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        await reader.readexactly(int(headers.get(b"content-length", b"0")))
    return status, headers


async def test_answer_before_the_body_keeps_the_socket_usable(server: ServerProcess) -> None:
    """A refusal answered from the request head (a bad room ID) before the small body is sent:
    the body is then read and dropped, and the same socket serves the next request."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    body = b'{"topic":"t","payload":1}'
    writer.write(HEAD.replace("body-room", "a%20b").format(length=len(body)).encode())
    await writer.drain()
    status, headers = await _response(reader)
    assert status.startswith(b"HTTP/1.1 400 ")
    assert headers.get(b"connection") != b"close"
    writer.write(body)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await writer.drain()
    status, _ = await _response(reader)
    assert status.startswith(b"HTTP/1.1 200 ")
    writer.close()


async def test_answer_before_a_large_body_says_connection_close(server: ServerProcess) -> None:
    """A 413 from a Content-Length of 50 MB says `Connection: close` and the socket ends, so
    that no client sends its next request on a socket about to close."""
    reader, writer = await _open(server, 50_000_000)
    status, headers = await _response(reader)
    assert status.startswith(b"HTTP/1.1 413 ")
    assert headers[b"connection"] == b"close"
    async with asyncio.timeout(5):
        assert await reader.read() == b""
    writer.close()


async def test_trickled_body_is_408_within_the_time_limit(
    start_server: Callable[..., ServerProcess],
) -> None:
    """A body sent a byte at a time (and then not at all) is answered 408 and the socket
    closed once --handshake-timeout (1 s) has passed."""
    server = start_server("--handshake-timeout", "1")
    reader, writer = await _open(server, 100)
    writer.write(b"{")
    await writer.drain()
    async with asyncio.timeout(6):
        status = await reader.readline()
        assert status.startswith(b"HTTP/1.1 408 ")
        while await reader.read(65536):
            pass
    writer.close()


async def test_sigterm_while_a_body_arrives_logs_no_traceback(
    start_server: Callable[..., ServerProcess],
) -> None:
    """SIGTERM while a request body is half sent: exit 0 and no traceback in the log."""
    server = start_server("--shutdown-timeout", "1")
    _, writer = await _open(server, 100)
    writer.write(b'{"topic":')
    await writer.drain()
    with server.http() as http:
        assert http.get("/healthz").status_code == 200  # the request above is being read
    server.signal(signal.SIGTERM)
    assert await asyncio.to_thread(server.wait, 15) == 0
    assert server.log is not None
    server.log.join(5)
    text = server.log.text()
    assert "Traceback" not in text
    assert "CancelledError" not in text
    writer.close()
