"""Issue 14 item 1: every WebSocket handshake ends (101, or an HTTP error and a close) within
--handshake-timeout, and shutdown tolerates half-done ones."""

from __future__ import annotations

import asyncio
import random
import signal
import struct
from collections.abc import Callable

import orjson
import pytest

from tests.harness import Client, ServerProcess
from tests.security.raw import WS_PATH, exchange, server_frames, upgrade_request

ANSWER_TIMEOUT = 5.0

StartServer = Callable[..., ServerProcess]


async def test_header_line_over_8_kib_is_answered_431(server: ServerProcess) -> None:
    """A header line h11 takes but the WebSocket parser refuses gets 431 and a close."""
    data, closed = await exchange(
        server.port, upgrade_request(headers=[("X-Big", "a" * 9000)]), ANSWER_TIMEOUT
    )
    assert data.startswith(b"HTTP/1.1 431 ")
    assert closed


async def test_more_than_128_header_lines_is_answered_431(server: ServerProcess) -> None:
    """130 header lines: 431 and a close."""
    headers = [(f"X-H{i}", "v") for i in range(130)]
    data, closed = await exchange(server.port, upgrade_request(headers=headers), ANSWER_TIMEOUT)
    assert data.startswith(b"HTTP/1.1 431 ")
    assert closed


async def test_upgrade_with_a_body_is_answered_400(server: ServerProcess) -> None:
    """An upgrade with `Content-Length` and a body: 400 and a close."""
    request = upgrade_request(headers=[("Content-Length", "5")], body=b"hello")
    data, closed = await exchange(server.port, request, ANSWER_TIMEOUT)
    assert data.startswith(b"HTTP/1.1 400 ")
    assert closed


@pytest.mark.parametrize(
    ("header", "status"),
    [
        (("Content-Length", "5"), b"400"),
        (("Transfer-Encoding", "chunked"), b"400"),
        (("Bad Name", "v"), b"400"),
    ],
)
async def test_a_whole_upgrade_head_websockets_refuses_is_answered(
    server: ServerProcess, header: tuple[str, str], status: bytes
) -> None:
    """A whole upgrade head alone in its read, which only websockets' parser refuses (a body
    announced, a transfer coding, a header name that is not a token): its answer and a
    close, as for any other head."""
    data, closed = await exchange(server.port, upgrade_request(headers=[header]), ANSWER_TIMEOUT)
    assert data.startswith(b"HTTP/1.1 " + status + b" ")
    assert closed


async def test_token_too_long_for_a_request_line_is_answered_414(server: ServerProcess) -> None:
    """A token that makes the request line longer than 8 KiB: 414 and a close (never a hang)."""
    request = upgrade_request(path=WS_PATH + "&token=" + "t" * 9000)
    data, closed = await exchange(server.port, request, ANSWER_TIMEOUT)
    assert data.startswith(b"HTTP/1.1 414 ")
    assert closed


async def test_refused_upgrades_hold_no_sockets(
    start_server: Callable[..., ServerProcess],
) -> None:
    """60 refused upgrades at once on a node limited to 10 connections (5 per IP) are each
    answered and closed, and a legitimate client is admitted afterwards."""
    server = start_server("--max-connections", "10", "--max-connections-per-ip", "5")
    request = upgrade_request(headers=[("X-Big", "a" * 9000)])
    results = await asyncio.gather(
        *(exchange(server.port, request, ANSWER_TIMEOUT) for _ in range(60))
    )
    assert all(closed and data.startswith(b"HTTP/1.1 431 ") for data, closed in results)
    alice = await Client.connect(server.ws_url, "alice", "after-attack")
    assert (await alice.join())["topic"] == "welcome"
    await alice.close()


async def test_sigterm_with_a_refused_upgrade_open_exits_0(
    start_server: Callable[..., ServerProcess],
) -> None:
    """SIGTERM while a refused upgrade's socket is still open ends with status 0 and no
    traceback."""
    server = start_server()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(upgrade_request(headers=[("Content-Length", "5")], body=b"hello"))
    await writer.drain()
    async with asyncio.timeout(ANSWER_TIMEOUT):
        assert (await reader.read(12)).startswith(b"HTTP/1.1 400")
    server.signal(signal.SIGTERM)
    assert await asyncio.to_thread(server.wait, 15) == 0
    assert server.log is not None
    server.log.join(5)
    assert "Traceback" not in server.log.text()
    writer.close()


def _fuzzed_request(rng: random.Random) -> bytes:
    """An upgrade request with random header counts, sizes and a random body, possibly cut
    short (the rest never sent)."""
    headers = [
        (f"X-F{i}", "v" * rng.choice((1, 10, 100, 1000, 4000, 8200)))
        for i in range(rng.choice((0, 1, 10, 100, 127, 128, 129, 200)))
    ]
    body = rng.randbytes(rng.choice((0, 0, 1, 100, 3000)))
    if body and rng.random() < 0.7:
        headers.append(("Content-Length", str(len(body) + rng.choice((-1, 0, 0, 50)))))
    request = upgrade_request(headers=headers, body=body)
    if rng.random() < 0.3:
        request = request[: rng.randrange(1, len(request))]
    return request


async def test_handshake_fuzz_ends_every_socket(
    start_server: Callable[..., ServerProcess],
) -> None:
    """80 fuzzed upgrades at once: every socket gets a 101 or is closed by the server within
    the handshake timeout (1 s here, waited for with a margin)."""
    server = start_server("--handshake-timeout", "1")
    rng = random.Random(1414)
    requests = [_fuzzed_request(rng) for _ in range(80)]

    async def ends(request: bytes) -> bool:
        data, closed = await exchange(server.port, request, 4.0)
        return closed or data.startswith(b"HTTP/1.1 101 ")

    results = await asyncio.gather(*(ends(r) for r in requests))
    hung = [r[:80] for r, ok in zip(requests, results, strict=True) if not ok]
    assert hung == []
    alice = await Client.connect(server.ws_url, "alice", "after-fuzz")
    assert (await alice.join())["topic"] == "welcome"
    await alice.close()


@pytest.mark.parametrize("spacing", [": ", ":"], ids=["without-h11", "with-h11"])
@pytest.mark.parametrize("case", [str.lower, str.upper, str.title], ids=["lower", "upper", "title"])
async def test_header_names_reach_the_application_in_any_case(
    start_server: StartServer, spacing: str, case: Callable[[str], str]
) -> None:
    """An upgrade as clients send it (whole in one write, `Name: value`: taken without h11)
    and one h11 takes (`Name:value`) are answered alike, whatever the case of the header
    names: the application sees them lowercased (ASGI), so the admin feed, a Starlette
    route, finds a foreign `Origin` and refuses it (1008), and a member is welcomed."""
    server = start_server("--api-key", "k" * 32)
    for path, refused in ((WS_PATH, False), ("/api/v1/admin/feed", True)):
        origin = [("Origin", "https://evil.example")] if refused else []
        head, _, _ = upgrade_request(path, origin).partition(b"\r\n\r\n")
        request_line, *fields = head.decode().split("\r\n")
        for name, value in (field.split(": ", 1) for field in fields):
            request_line += f"\r\n{case(name)}{spacing}{value}"
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write((request_line + "\r\n\r\n").encode())
            async with asyncio.timeout(ANSWER_TIMEOUT):
                status = await reader.readuntil(b"\r\n\r\n")
                assert status.startswith(b"HTTP/1.1 101"), status
                received = b""
                while len(frames := server_frames(received)) < 1 + refused:
                    received += await reader.read(65536)
        finally:
            writer.close()
        topic = orjson.loads(frames[0][1])["topic"]
        if refused:
            assert topic == "error"
            assert frames[1][0] == 8
            assert struct.unpack("!H", frames[1][1][:2])[0] == 1008
        else:
            assert topic == "welcome"
