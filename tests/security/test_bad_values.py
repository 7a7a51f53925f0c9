"""Issue 14 items 6, 7, 8 and 12: values that once broke encoding or parsing get the
contract's refusals."""

from __future__ import annotations

from urllib.parse import quote

import websockets

from tests.harness import RECV_TIMEOUT, Client, ServerProcess


async def test_non_ascii_close_reason_keeps_its_close_code(server: ServerProcess) -> None:
    """A duplicate username of 100 two-byte characters: the close reason is cut to 123 bytes
    and the client sees 4409 (not 1006)."""
    name = "é" * 100
    first = await Client.connect(server.ws_url, name, "ünïcode-room")
    await first.join()
    second = await Client.connect(server.ws_url, name, "ünïcode-room")
    code, frames = await second.closed()
    assert code == 4409
    assert [f["payload"]["code"] for f in frames] == ["duplicate"]
    assert len(second.ws.close_reason.encode()) <= 123
    await first.close()


async def test_unicode_digit_since_is_4400(server: ServerProcess) -> None:
    """`since=²` (a digit to str.isdigit, not to int) is refused with 4400."""
    ws = await websockets.connect(
        f"{server.ws_url}?username=u&roomID=sup&since={quote('²')}&epoch=e",
        open_timeout=RECV_TIMEOUT,
    )
    code, frames = await Client(ws).closed()
    assert code == 4400
    assert frames[0]["payload"]["code"] == "bad_request"


def test_unicode_digit_since_in_history_is_400(server: ServerProcess) -> None:
    """GET .../history?since=² answers 400, not 500."""
    with server.http() as http:
        response = http.get("/api/v1/rooms/sup/history", params={"since": "²"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_frame"


async def test_deeply_nested_payload_is_invalid_frame(server: ServerProcess) -> None:
    """A payload nested 300 deep parses but cannot be relayed: `invalid_frame`, the
    connection stays open."""
    client = await Client.connect(server.ws_url, "deep", "deep-room")
    await client.join()
    await client.send('{"topic":"chat","id":1,"payload":' + "[" * 300 + "]" * 300 + "}")
    frame = await client.recv()
    assert frame["topic"] == "error"
    assert frame["payload"]["code"] == "invalid_frame"
    assert frame["payload"]["id"] == 1
    await client.send({"topic": "ping", "payload": 1})
    assert (await client.recv())["topic"] == "pong"
    await client.close()


def test_deeply_nested_http_body_is_400(server: ServerProcess) -> None:
    """The same over the HTTP API: 400 `invalid_frame`."""
    body = '{"topic":"chat","payload":' + "[" * 300 + "]" * 300 + "}"
    with server.http() as http:
        response = http.post(
            "/api/v1/rooms/deep/messages",
            content=body,
            headers={"Content-Type": "application/json"},
        )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_frame"


async def test_integers_beyond_64_bits_are_refused(server: ServerProcess) -> None:
    """An integer beyond 64 bits in a payload, or an id of 2**64, is `invalid_frame` (never
    relayed rounded to a float); 2**64 - 1 and -2**63 are relayed exactly."""
    client = await Client.connect(server.ws_url, "big", "big-room")
    await client.join()
    await client.send('{"topic":"chat","payload":{"n":18446744073709551616},"id":1}')
    frame = await client.recv()
    assert (frame["topic"], frame["payload"]["code"], frame["payload"]["id"]) == (
        "error",
        "invalid_frame",
        1,
    )
    await client.send('{"topic":"chat","payload":1,"id":18446744073709551616}')
    frame = await client.recv()
    assert (frame["topic"], frame["payload"]["code"]) == ("error", "invalid_frame")
    await client.send(
        '{"topic":"chat","payload":[18446744073709551615,-9223372036854775808,"123456789012345678901"]}'
    )
    relayed = await client.recv()
    assert relayed["payload"] == [2**64 - 1, -(2**63), "123456789012345678901"]
    await client.close()


def test_integers_beyond_64_bits_in_http_body_are_400(server: ServerProcess) -> None:
    """The same over the HTTP API: 400 `invalid_frame`."""
    with server.http() as http:
        response = http.post(
            "/api/v1/rooms/big/messages",
            content='{"topic":"chat","payload":-9223372036854775809}',
            headers={"Content-Type": "application/json"},
        )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_frame"
