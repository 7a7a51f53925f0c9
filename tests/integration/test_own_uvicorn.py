"""An application's own uvicorn with roomcast's protocol classes (`handshake_protocol`,
`websocket_protocol`): upgrades, plain HTTP and the handshake deadline all work there."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness import ROOT, Client, uvicorn_process

SCRIPT = Path(ROOT) / "tests/integration/own_uvicorn.py"


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with uvicorn_process([sys.executable, str(SCRIPT)]) as (url, _):
        yield url


async def test_members_join_and_talk(url: str) -> None:
    ws_url = url.replace("http://", "ws://") + "/api/v1/ws"
    alice = await Client.connect(ws_url, "alice", "own")
    assert (await alice.join())["topic"] == "welcome"
    bob = await Client.connect(ws_url, "bob", "own")
    assert (await bob.join())["topic"] == "welcome"
    await bob.send({"topic": "chat", "payload": "hi"})
    while (frame := await alice.recv())["topic"] != "chat":
        pass
    assert frame["payload"] == "hi"
    await alice.close()
    await bob.close()


async def test_plain_http_takes_h11(url: str) -> None:
    async with httpx.AsyncClient(timeout=5) as http:
        response = await http.get(url + "/healthz")
    assert response.status_code == 200


async def test_a_socket_that_sends_nothing_is_closed_at_the_deadline(url: str) -> None:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        async with asyncio.timeout(10):  # the deadline is 2 s
            assert await reader.read() == b""
    finally:
        writer.close()
