"""Issue 14 item 5: web pages in a browser on the server's machine cannot use the key-less
HTTP API, and a rebound host name passes neither the API nor the same-host origin rule."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest

from tests.harness import RECV_TIMEOUT, Client, ServerProcess
from tests.security.raw import exchange, server_frames, upgrade_request

MESSAGE = {"topic": "chat", "payload": 1}


def test_text_plain_body_is_415(server: ServerProcess) -> None:
    """A "simple" cross-site POST (text/plain) publishes nothing: 415."""
    with server.http() as http:
        response = http.post(
            "/api/v1/rooms/page-room/messages",
            content=b'{"topic":"chat","payload":1}',
            headers={"Content-Type": "text/plain"},
        )
        assert response.status_code == 415
        assert http.get("/api/v1/rooms/page-room/history").json()["messages"] == []


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Sec-Fetch-Site": "same-origin", "Origin": "http://evil.example"},
    ],
    ids=["origin", "origin-null", "cross-site", "same-site", "same-origin-foreign-origin"],
)
def test_requests_from_web_pages_are_403(server: ServerProcess, headers: dict[str, str]) -> None:
    """Without an API key, a request a browser sent for a page of another site is refused
    (403)."""
    with server.http() as http:
        response = http.post("/api/v1/rooms/page-room/messages", json=MESSAGE, headers=headers)
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "forbidden"
        assert http.get("/api/v1/rooms/page-room/members", headers=headers).status_code == 403


def test_pages_of_the_server_itself_are_answered(server: ServerProcess) -> None:
    """A page roomcast served (the demo, the admin page) calls the key-less API same-origin."""
    host = server.url.removeprefix("http://").rstrip("/")
    headers = {"Sec-Fetch-Site": "same-origin", "Origin": f"http://{host}"}
    with server.http() as http:
        response = http.post("/api/v1/rooms/page-room/messages", json=MESSAGE, headers=headers)
        assert response.status_code == 202
        assert http.get("/api/v1/rooms/page-room/members", headers=headers).status_code == 200


def test_typed_in_address_is_answered(server: ServerProcess) -> None:
    """A request the user typed into the address bar (Sec-Fetch-Site: none) is answered."""
    with server.http() as http:
        response = http.get("/api/v1/rooms", headers={"Sec-Fetch-Site": "none"})
    assert response.status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example"])
def test_rebound_host_is_403(server: ServerProcess, host: str) -> None:
    """A `Host` naming another site (DNS rebinding) cannot read history: 403."""
    with server.http() as http:
        response = http.get("/api/v1/rooms/page-room/history", headers={"Host": host})
    assert response.status_code == 403


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "127.0.0.1", "[::1]:8000"])
def test_loopback_hosts_are_answered(server: ServerProcess, host: str) -> None:
    """IP addresses and localhost are this machine: answered."""
    with server.http() as http:
        response = http.get("/api/v1/rooms", headers={"Host": host})
    assert response.status_code == 200


def test_allowed_hosts_are_answered(start_server: Callable[..., ServerProcess]) -> None:
    """A name listed in --allowed-hosts is answered."""
    server = start_server("--allowed-hosts", "chat.internal,*.corp.internal")
    with server.http() as http:
        assert http.get("/api/v1/rooms", headers={"Host": "chat.internal"}).status_code == 200
        assert http.get("/api/v1/rooms", headers={"Host": "a.corp.internal"}).status_code == 200
        assert http.get("/api/v1/rooms", headers={"Host": "evil.example"}).status_code == 403


def test_api_key_requests_from_pages_are_answered(
    start_server: Callable[..., ServerProcess],
) -> None:
    """With an API key, the key is the proof: a request with an Origin is answered."""
    server = start_server("--api-key", "k" * 32)
    with server.http() as http:
        response = http.get(
            "/api/v1/rooms",
            headers={"Origin": "http://app.example", "Authorization": "Bearer " + "k" * 32},
        )
    assert response.status_code == 200


async def test_websocket_with_rebound_host_and_origin_is_1008(server: ServerProcess) -> None:
    """Host = Origin = an attacker's name no longer passes the same-host origin rule: one
    `forbidden` error frame, then 1008."""
    request = upgrade_request(
        path="/api/v1/ws?username=u&roomID=page-room",
        headers=[("Origin", "http://evil.example")],
    ).replace(b"Host: 127.0.0.1", b"Host: evil.example")
    data, closed = await exchange(server.port, request, RECV_TIMEOUT)
    assert data.startswith(b"HTTP/1.1 101 ")
    frames = server_frames(data.split(b"\r\n\r\n", 1)[1])
    assert [opcode for opcode, _ in frames] == [0x1, 0x8]
    assert orjson.loads(frames[0][1])["payload"]["code"] == "forbidden"
    assert int.from_bytes(frames[1][1][:2], "big") == 1008
    assert closed


async def test_websocket_from_the_servers_own_page_is_admitted(server: ServerProcess) -> None:
    """Origin = Host = the server's address (its own demo page) is admitted."""
    client = await Client.connect(server.ws_url, "u", "page-room", headers={"Origin": server.url})
    assert (await client.join())["topic"] == "welcome"
    await client.close()
