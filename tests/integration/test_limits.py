"""Abuse limits: frame rate, connection counts and the handshake time limit."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
import websockets

from tests.harness import RECV_TIMEOUT, Client, ServerProcess, running_server


@pytest.fixture(scope="module")
def limited_server() -> Iterator[ServerProcess]:
    """Small connection limits and a one-second handshake limit."""
    with running_server(
        "--max-connections",
        "4",
        "--max-connections-per-ip",
        "3",
        "--max-connections-per-user",
        "2",
        "--handshake-timeout",
        "1",
    ) as server:
        yield server


async def connect_from(server: ServerProcess, source: str, username: str, room: str) -> Client:
    """A client whose socket comes from the loopback address `source` (e.g. 127.0.0.2)."""
    query = urlencode({"username": username, "roomID": room})
    ws = await websockets.connect(
        f"{server.ws_url}?{query}", open_timeout=RECV_TIMEOUT, local_addr=(source, 0)
    )
    return Client(ws)


async def expect_4429(client: Client) -> None:
    code, frames = await client.closed()
    assert code == 4429
    assert [f["payload"]["code"] for f in frames] == ["rate_limited"]


async def test_flood_is_limited_then_closed_while_others_receive() -> None:
    """A client within the burst is never refused; a flooding one gets `rate_limited` frames,
    then 4429, while the room's other member keeps receiving messages."""
    with running_server("--rate-limit", "5", "--rate-burst", "10") as server:
        calm = await Client.connect(server.ws_url, "calm", "r2")
        await calm.join()
        for i in range(9):
            await calm.send({"topic": "chat", "payload": i, "id": i})
        for i in range(9):
            assert (await calm.recv_topic("ack"))["payload"]["id"] == i
        await calm.barrier()
        await calm.close()

        listener = await Client.connect(server.ws_url, "listener", "r1")
        await listener.join()
        flooder = await Client.connect(server.ws_url, "flooder", "r1")
        await flooder.join()
        await listener.recv_topic("presence.join")
        for i in range(60):
            await flooder.send({"topic": "chat", "payload": i, "id": i})
        code, frames = await flooder.closed()
        assert code == 4429
        errors = [f["payload"] for f in frames if f["topic"] == "error"]
        limited = [e for e in errors if e["code"] == "rate_limited"]
        # About `burst` refused frames; the bucket refills a little meanwhile.
        assert 5 <= len(limited) <= 20, errors
        assert errors[-1]["code"] == "rate_limited"
        # Every frame handled got exactly one answer with its id, the one that closed it too.
        answered = [f["payload"]["id"] for f in frames if f["topic"] in ("ack", "error")]
        assert answered == list(range(len(answered)))
        acked = [f["payload"]["id"] for f in frames if f["topic"] == "ack"]
        assert 10 <= len(acked) <= 25
        # The listener got the flooder's admitted messages, then still gets the room's traffic.
        got = [(await listener.recv_topic("chat"))["payload"] for _ in acked]
        assert got == acked
        with server.http() as http:
            response = http.post(
                "/api/v1/rooms/r1/messages", json={"topic": "news", "payload": "still here"}
            )
            assert response.status_code == 202
        assert (await listener.recv_topic("news"))["payload"] == "still here"
        await listener.barrier()
        await listener.close()


async def test_connection_limits(limited_server: ServerProcess) -> None:
    """Per-username, per-IP and per-node limits refuse with 4429; a leave frees a place."""
    url = limited_server.ws_url
    clients: list[Client] = []
    try:
        for room in ("r1", "r2"):
            clients.append(await Client.connect(url, "alice", room))
            await clients[-1].join()
        await expect_4429(await Client.connect(url, "alice", "r3"))
        clients.append(await Client.connect(url, "bob", "r1"))
        await clients[-1].join()
        await expect_4429(await Client.connect(url, "carol", "r1"))  # 3 from 127.0.0.1
        clients.append(await connect_from(limited_server, "127.0.0.2", "dave", "r1"))
        await clients[-1].join()
        await expect_4429(await connect_from(limited_server, "127.0.0.2", "erin", "r1"))  # 4
        # Bob leaves: carol gets in once the server has counted the leave.
        await clients.pop(2).close()
        deadline = time.monotonic() + RECV_TIMEOUT
        while True:
            carol = await Client.connect(url, "carol", "r1")
            frame = await carol.recv()
            if frame["topic"] == "welcome":
                clients.append(carol)
                break
            assert frame["payload"]["code"] == "rate_limited"
            await carol.closed()
            assert time.monotonic() < deadline, "the leave never freed a place"
            await asyncio.sleep(0.05)  # polling: no event tells the client the leave was counted
    finally:
        for client in clients:
            await client.close()


def _closed_by_server(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        while sock.recv(1024):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


@pytest.mark.parametrize("sent", [b"", b"GET /api/v1/ws?username=a&roomID=r HTTP/1.1\r\nHost: x"])
async def test_incomplete_handshake_is_closed(limited_server: ServerProcess, sent: bytes) -> None:
    """A socket that never completes its request head is closed after --handshake-timeout."""

    def probe() -> bool:
        with socket.create_connection(("127.0.0.1", limited_server.port), timeout=5) as sock:
            sock.sendall(sent)
            return _closed_by_server(sock, 5.0)

    assert await asyncio.to_thread(probe)
    # A prompt client is unaffected.
    with limited_server.http() as http:
        assert http.get("/healthz").status_code == 200


async def test_slow_but_complete_handshake_is_served(limited_server: ServerProcess) -> None:
    """A request head completed within the limit is served normally."""

    def probe() -> Any:
        with socket.create_connection(("127.0.0.1", limited_server.port), timeout=5) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")
            sock.sendall(b"Host: 127.0.0.1\r\nConnection: close\r\n\r\n")
            sock.settimeout(5)
            data = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(4096):
                    data += chunk
            return data

    assert (await asyncio.to_thread(probe)).startswith(b"HTTP/1.1 200")
