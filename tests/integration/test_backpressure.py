"""Slow consumers: a member that stops reading is closed with 4408 once its outbound buffer
overflows, while the other members of the room keep receiving everything."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable

import httpx

from roomcast.transports.uvicorn import CLOSE_TIMEOUT, SLOW_PEER_CLOSE_TIMEOUT
from tests.harness import Client, ServerProcess
from tests.integration.reliability import RawClient, metric, poll_until, publish

StartServer = Callable[..., ServerProcess]


async def test_stalled_reader_is_closed_with_4408_and_others_get_everything(
    start_server: StartServer,
) -> None:
    """A raw socket that stops reading (small SO_RCVBUF) is disconnected with 4408 when its
    64 KiB buffer overflows: the server logs connection.slow_consumer, counts it in
    roomcast_slow_consumer_disconnects_total and announces the leave, while another member
    receives every message in order."""
    server = start_server("--outbound-buffer", "65536")
    assert server.log is not None
    slow = await RawClient.connect(server, "slow", "r", rcvbuf=4096)
    fast = await Client.connect(server.ws_url, "fast", "r")
    await fast.join()
    offsets: list[int] = []
    presence: list[dict[str, object]] = []
    seen = asyncio.Condition()

    async def read_fast() -> None:
        while True:
            frame = await fast.recv(10)
            async with seen:
                if "offset" in frame:
                    offsets.append(frame["offset"])
                elif frame["topic"].startswith("presence."):
                    presence.append(frame)
                seen.notify_all()

    reader = asyncio.create_task(read_fast())
    payload = {"blob": "x" * 8192}
    last = 0
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
        # Publish until the server gives up on the stalled reader (bounded: 4000 x 8 KiB).
        for _ in range(4000):
            last = await publish(http, "r", payload)
            if any("connection.slow_consumer" in line for line in server.log.lines):
                break
        else:
            raise AssertionError("the stalled reader was never disconnected")
        for _ in range(20):
            last = await publish(http, "r", payload)
        async with asyncio.timeout(10), seen:
            await seen.wait_for(lambda: len(offsets) >= last and bool(presence))
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reader
    assert offsets == list(range(1, last + 1))
    assert {"topic": "presence.leave", "payload": {"username": "slow"}, "room": "r"} in presence
    line = server.log.wait_for(r"connection\.slow_consumer .*username=slow", timeout=1)
    assert "room=r" in line.string
    assert metric(server, "roomcast_slow_consumer_disconnects_total") == 1.0
    assert metric(server, 'roomcast_disconnects_total{code="4408"}') == 1.0
    # When the stalled client finally reads, it finds the 4408 close after what was buffered
    # (the server waits SLOW_PEER_CLOSE_TIMEOUT for it).
    code, _ = await slow.read_until_close(timeout=10)
    assert code == 4408
    slow.close()
    with server.http() as http:
        assert http.get("/api/v1/rooms/r/members").json() == {"members": ["fast"]}
    await fast.barrier()
    await fast.close()


async def test_stalled_reader_socket_is_released(start_server: StartServer) -> None:
    """The socket of a dropped slow consumer that never reads again is released (the server
    aborts it when the close is not answered, SLOW_PEER_CLOSE_TIMEOUT after it) instead of
    being held open forever."""
    server = start_server("--outbound-buffer", "65536")
    assert server.log is not None
    assert server.proc is not None
    baseline = _sockets(server.proc.pid)
    slow = await RawClient.connect(server, "slow", "r", rcvbuf=4096)
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
        await _flood_until_slow_consumer(server, http)
    server.log.wait_for(r"connection\.left .*username=slow .*reason=slow_consumer", timeout=5)
    pid = server.proc.pid
    await poll_until(lambda: _sockets(pid) <= baseline, timeout=SLOW_PEER_CLOSE_TIMEOUT + 5)
    with server.http() as http:
        assert http.get("/api/v1/rooms").json() == {"rooms": []}
    assert metric(server, "roomcast_connections") == 0.0
    slow.close()


async def test_a_slow_consumer_that_reads_again_later_gets_its_4408(
    start_server: StartServer,
) -> None:
    """A client that stopped reading, and reads again only after longer than the server
    waits for an ordinary close reply (CLOSE_TIMEOUT), still finds the 4408 close frame
    after what was buffered: the socket of a peer that stopped reading is kept until it has
    had SLOW_PEER_CLOSE_TIMEOUT to get there."""
    server = start_server("--outbound-buffer", "65536")
    assert server.log is not None
    slow = await RawClient.connect(server, "slow", "r", rcvbuf=4096)
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
        await _flood_until_slow_consumer(server, http)
    # The stalled client, as one that is busy for a while: it reads again past CLOSE_TIMEOUT.
    await asyncio.sleep(CLOSE_TIMEOUT + 1)
    code, _ = await slow.read_until_close(timeout=10)
    assert code == 4408
    slow.close()


async def _flood_until_slow_consumer(server: ServerProcess, http: httpx.AsyncClient) -> None:
    """Publish 8 KiB messages to room r until the server drops a slow consumer (at most
    4,000)."""
    assert server.log is not None
    for _ in range(4000):
        await publish(http, "r", {"blob": "y" * 8192})
        if any("connection.slow_consumer" in line for line in server.log.lines):
            return
    raise AssertionError("the stalled reader was never disconnected")


def _sockets(pid: int) -> int:
    """How many sockets the process holds open."""
    fds = f"/proc/{pid}/fd"
    count = 0
    for fd in os.listdir(fds):
        with contextlib.suppress(OSError):
            count += os.readlink(f"{fds}/{fd}").startswith("socket:")
    return count
