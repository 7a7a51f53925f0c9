"""Issue 14 item 2: one client's burst cannot make the server work for it without bound."""

from __future__ import annotations

import re
from collections.abc import Callable

from tests.harness import Client, ServerProcess


def _frames_in(server: ServerProcess) -> float:
    with server.http() as http:
        text = http.get("/metrics").text
    match = re.search(r"^roomcast_frames_in_total (\S+)$", text, re.M)
    assert match is not None
    return float(match.group(1))


async def _burst(client: Client, texts: list[str]) -> None:
    """Send every text frame in one write."""
    for text in texts:
        client.ws.protocol.send_text(text.encode())
    client.ws.send_data()


async def test_frames_behind_a_close_are_not_parsed(
    start_server: Callable[..., ServerProcess],
) -> None:
    """20,000 frames in one write from a client closed after its first few: the server stops
    reading them once the connection is closing (the frame counter stays far below)."""
    server = start_server("--rate-limit", "1", "--rate-burst", "5")
    before = _frames_in(server)
    client = await Client.connect(server.ws_url, "flood", "flood-room")
    await client.join()
    await _burst(client, ["x"] * 20000)
    code, _ = await client.closed()
    assert code == 4429
    assert _frames_in(server) - before < 2000
