"""Issue 14 item 2: one client's burst cannot make the server work for it without bound, and a
burst of refused frames gets one error."""

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


async def test_burst_of_rate_limited_frames_gets_one_error(
    start_server: Callable[..., ServerProcess],
) -> None:
    """100 id-less bad frames in one write, with a bucket of 5: the first 5 get their
    `invalid_frame` errors, the refused ones after them one `rate_limited` error in all,
    then the close (4429) its own."""
    server = start_server("--rate-limit", "1", "--rate-burst", "5")
    client = await Client.connect(server.ws_url, "flood", "flood-room")
    await client.join()
    await _burst(client, ["x"] * 100)
    code, frames = await client.closed()
    assert code == 4429
    codes = [f["payload"]["code"] for f in frames if f["topic"] == "error"]
    assert codes.count("rate_limited") == 2  # one for the burst, one with the close
    assert codes.count("invalid_json") in (5, 6)  # 6 if a token came back meanwhile
    assert codes[-1] == "rate_limited"


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


async def test_ids_in_a_refused_burst_are_each_answered(
    start_server: Callable[..., ServerProcess],
) -> None:
    """Frames with an `id` keep the contract's one answer per id while rate limited."""
    server = start_server("--rate-limit", "1", "--rate-burst", "3")
    client = await Client.connect(server.ws_url, "flood", "flood-room")
    await client.join()
    await _burst(client, [f'{{"topic":"chat","payload":1,"id":{i}}}' for i in range(6)])
    answered: set[int] = set()
    while len(answered) < 6:
        frame = await client.recv()
        if frame["topic"] in ("ack", "error"):
            answered.add(frame["payload"]["id"])
    assert answered == set(range(6))
    await client.close()
