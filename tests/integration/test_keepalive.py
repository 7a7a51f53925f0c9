"""Keepalive: the server pings; a connection that does not answer is closed with 4408 and
leaves presence; one that answers stays."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from tests.harness import Client, ServerProcess
from tests.integration.reliability import RawClient, metric

StartServer = Callable[..., ServerProcess]

KEEPALIVE = ("--ping-interval", "0.5", "--ping-timeout", "1")


async def test_missing_pongs_close_with_4408_and_leave_presence(
    start_server: StartServer,
) -> None:
    """A client that never answers pings is closed with 4408 within ping interval + timeout;
    the other members get presence.leave, and the close is logged and counted."""
    server = start_server(*KEEPALIVE)
    assert server.log is not None
    watcher = await Client.connect(server.ws_url, "watcher", "r")
    await watcher.join()
    mute = await RawClient.connect(server, "mute", "r")
    assert (await watcher.recv())["topic"] == "presence.join"
    # Interval + timeout is 1.5 s; the bound of 5 s leaves room for a loaded machine.
    code, texts = await mute.read_until_close(timeout=5, answer_pings=False)
    assert code == 4408
    assert texts >= 1  # the welcome frame
    assert await watcher.recv() == {
        "topic": "presence.leave",
        "payload": {"username": "mute"},
        "room": "r",
    }
    server.log.wait_for(r"connection\.keepalive_timeout .*username=mute", timeout=5)
    server.log.wait_for(r"connection\.left .*username=mute .*reason=keepalive_timeout", timeout=5)
    assert metric(server, 'roomcast_disconnects_total{code="4408"}') == 1.0
    mute.close()
    with server.http() as http:
        assert http.get("/api/v1/rooms/r/members").json() == {"members": ["watcher"]}
    await watcher.close()


async def test_answered_pings_keep_the_connection(start_server: StartServer) -> None:
    """A client that answers pings stays connected through several ping rounds; a websockets
    client (automatic pongs) too."""
    server = start_server(*KEEPALIVE)
    polite = await RawClient.connect(server, "polite", "r")
    other = await Client.connect(server.ws_url, "other", "r")
    await other.join()
    pings = 0
    async with asyncio.timeout(10):
        while pings < 4:
            opcode, payload = await polite.read_frame()
            if opcode == 0x9:
                pings += 1
                await polite.send_frame(0xA, payload)
            assert opcode != 0x8, f"closed: {payload!r}"
    await polite.send_text({"topic": "ping", "payload": "still here"})
    async with asyncio.timeout(5):
        while True:
            opcode, payload = await polite.read_frame()
            if opcode == 0x9:
                await polite.send_frame(0xA, payload)
            elif opcode == 0x1 and b"still here" in payload:
                break
            assert opcode != 0x8, f"closed: {payload!r}"
    # The websockets client went through the same rounds with its automatic pongs.
    await other.barrier()
    assert other.ws.close_code is None
    polite.close()
    await other.close()
