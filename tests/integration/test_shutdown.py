"""PROTOCOL section 6: SIGTERM and SIGINT stop the server cleanly, closing clients with 1012."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import pytest

from tests.harness import Client, ServerProcess


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_closes_clients_1012_and_exits_0(
    start_server: Callable[..., ServerProcess], signum: int
) -> None:
    """On the signal every client gets close 1012 and the process exits 0 within 5 s."""
    server = start_server()
    clients = []
    for room, name in [("r1", "alice"), ("r1", "bob"), ("r2", "carol")]:
        client = await Client.connect(server.ws_url, name, room)
        await client.join()
        clients.append(client)
    await clients[0].recv_topic("presence.join")
    server.signal(signum)
    async with asyncio.timeout(5):
        codes = await asyncio.gather(*(c.closed(timeout=5) for c in clients))
        status = await asyncio.to_thread(server.wait, 5)
    assert [code for code, _ in codes] == [1012, 1012, 1012]
    for _, frames in codes:
        # The others leaving presence on the way out may be announced; nothing else is sent.
        assert {f["topic"] for f in frames} <= {"presence.leave"}
    assert status == 0
    assert server.log is not None
    assert "Traceback" not in server.log.text()


async def test_signal_with_no_clients_exits_0(start_server: Callable[..., ServerProcess]) -> None:
    """An idle server stops on SIGTERM with status 0 within 5 s."""
    server = start_server()
    server.signal(signal.SIGTERM)
    assert await asyncio.to_thread(server.wait, 5) == 0
