"""PROTOCOL section 4 on one node: the HTTP API, health, readiness, metrics and the API key."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from urllib.parse import quote

import httpx
import pytest

from tests.harness import RECV_TIMEOUT, Client, ServerProcess


@pytest.fixture
def server(shared_server: ServerProcess) -> ServerProcess:
    """The module's shared server (see conftest.py)."""
    return shared_server


@pytest.fixture
async def api(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    """An async HTTP client for the module's server."""
    async with httpx.AsyncClient(base_url=server.url, timeout=RECV_TIMEOUT) as client:
        yield client


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    """An HTTP client for the module's server."""
    with server.http() as client:
        yield client


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    """The response is a JSON error `{"error": {"code", "message"}}` with `status`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]


async def member(server: ServerProcess, room: str, name: str) -> Client:
    client = await Client.connect(server.ws_url, name, room)
    await client.join()
    return client


async def test_post_message_publishes_to_room(
    server: ServerProcess, api: httpx.AsyncClient, room: str
) -> None:
    """POST messages answers 202 with the offset, and every member receives it from $server."""
    alice = await member(server, room, "alice")
    response = await api.post(f"/api/v1/rooms/{room}/messages", json={"topic": "t", "payload": [1]})
    assert response.status_code == 202
    assert response.json() == {"offset": 1}
    assert await alice.recv() == {
        "topic": "t",
        "payload": [1],
        "room": room,
        "from": "$server",
        "offset": 1,
    }
    response = await api.post(f"/api/v1/rooms/{room}/messages", json={"topic": "t", "payload": 0})
    assert response.json() == {"offset": 2}
    assert (await alice.recv())["offset"] == 2
    await alice.close()


async def test_post_message_to_empty_room_is_retained(api: httpx.AsyncClient, room: str) -> None:
    """A message to a room with no member still gets an offset and is kept in history."""
    response = await api.post(f"/api/v1/rooms/{room}/messages", json={"topic": "t", "payload": "x"})
    assert response.status_code == 202
    assert response.json() == {"offset": 1}
    history = (await api.get(f"/api/v1/rooms/{room}/history")).json()
    assert [m["payload"] for m in history["messages"]] == ["x"]


async def test_post_message_to_one_member(
    server: ServerProcess, api: httpx.AsyncClient, room: str
) -> None:
    """POST with `to` reaches only that member, with a `to` field."""
    alice = await member(server, room, "alice")
    bob = await member(server, room, "bob")
    await alice.recv_topic("presence.join")
    response = await api.post(
        f"/api/v1/rooms/{room}/messages", json={"topic": "dm", "payload": {"k": 1}, "to": "bob"}
    )
    assert response.status_code == 202
    assert response.json() == {"offset": 1}
    assert await bob.recv() == {
        "topic": "dm",
        "payload": {"k": 1},
        "room": room,
        "from": "$server",
        "to": "bob",
        "offset": 1,
    }
    await alice.barrier()
    await bob.barrier()
    await alice.close()
    await bob.close()


async def test_post_message_to_absent_member_is_404(
    server: ServerProcess, api: httpx.AsyncClient, room: str
) -> None:
    """POST with `to` a member connected nowhere is 404 member_not_found; nothing is sent."""
    alice = await member(server, room, "alice")
    response = await api.post(
        f"/api/v1/rooms/{room}/messages", json={"topic": "dm", "payload": 1, "to": "zed"}
    )
    assert_error(response, 404, "member_not_found")
    await alice.barrier()
    assert (await api.get(f"/api/v1/rooms/{room}/history")).json()["messages"] == []
    await alice.close()


BAD_BODIES: dict[str, tuple[bytes, int, str]] = {
    "not json": (b"{nope", 400, "invalid_json"),
    "empty": (b"", 400, "invalid_json"),
    "array": (b'[{"topic":"t","payload":1}]', 400, "invalid_frame"),
    "string": (b'"hello"', 400, "invalid_frame"),
    "topic missing": (b'{"payload":1}', 400, "invalid_frame"),
    "topic not a string": (b'{"topic":1,"payload":1}', 400, "invalid_frame"),
    "topic empty": (b'{"topic":"","payload":1}', 400, "invalid_frame"),
    "topic too long": (b'{"topic":"' + b"t" * 129 + b'","payload":1}', 400, "invalid_frame"),
    "topic reserved": (b'{"topic":"$x","payload":1}', 400, "invalid_frame"),
    # Built-in topics: a member would take the message for the server's own answer.
    "topic room.history": (b'{"topic":"room.history","payload":{}}', 400, "invalid_frame"),
    "topic room.anything": (b'{"topic":"room.x","payload":1}', 400, "invalid_frame"),
    "topic presence": (b'{"topic":"presence","payload":[]}', 400, "invalid_frame"),
    "topic ping": (b'{"topic":"ping","payload":1}', 400, "invalid_frame"),
    "payload missing": (b'{"topic":"t"}', 400, "invalid_frame"),
    "payload null": (b'{"topic":"t","payload":null}', 400, "invalid_frame"),
    "to not a string": (b'{"topic":"t","payload":1,"to":5}', 400, "invalid_frame"),
    "to with space": (b'{"topic":"t","payload":1,"to":"a b"}', 400, "invalid_frame"),
}


@pytest.mark.parametrize(("body", "status", "code"), BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_post_message_bad_body(
    http: httpx.Client, room: str, body: bytes, status: int, code: str
) -> None:
    """A bad POST body gets a JSON error with a fitting status and publishes nothing."""
    response = http.post(
        f"/api/v1/rooms/{room}/messages",
        content=body,
        headers={"content-type": "application/json"},
    )
    assert_error(response, status, code)
    assert http.get(f"/api/v1/rooms/{room}/history").json()["messages"] == []


@pytest.mark.parametrize("bad_room", ["a%20b", "x" * 129, "a%09b", "a%01b"])
def test_bad_room_id_is_400(http: httpx.Client, bad_room: str) -> None:
    """A roomID that breaks the naming rules is 400 on every room route."""
    assert_error(
        http.post(f"/api/v1/rooms/{bad_room}/messages", json={"topic": "t", "payload": 1}),
        400,
        "invalid_frame",
    )
    assert_error(http.get(f"/api/v1/rooms/{bad_room}/members"), 400, "invalid_frame")
    assert_error(http.get(f"/api/v1/rooms/{bad_room}/history"), 400, "invalid_frame")
    assert_error(http.delete(f"/api/v1/rooms/{bad_room}/members/bob"), 400, "invalid_frame")


async def test_get_rooms_and_members(
    server: ServerProcess, api: httpx.AsyncClient, room: str
) -> None:
    """GET rooms lists each room with its sorted members; GET members lists one room's."""
    bob = await member(server, room, "bob")
    alice = await member(server, room, "alice")
    listed = [r for r in (await api.get("/api/v1/rooms")).json()["rooms"] if r["roomID"] == room]
    assert listed == [{"roomID": room, "members": ["alice", "bob"]}]
    response = await api.get(f"/api/v1/rooms/{room}/members")
    assert response.status_code == 200
    assert response.json() == {"members": ["alice", "bob"]}
    assert (await api.get(f"/api/v1/rooms/{room}-none/members")).json() == {"members": []}
    await alice.close()
    await bob.close()


def test_history_since_and_limit(http: httpx.Client, room: str) -> None:
    """GET history returns retained messages after ?since, at most ?limit, oldest first."""
    for n in range(1, 6):
        http.post(f"/api/v1/rooms/{room}/messages", json={"topic": "t", "payload": n})
    page = http.get(f"/api/v1/rooms/{room}/history").json()
    assert isinstance(page["epoch"], str)
    assert [m["offset"] for m in page["messages"]] == [1, 2, 3, 4, 5]
    assert page["messages"][0] == {
        "topic": "t",
        "payload": 1,
        "room": room,
        "from": "$server",
        "offset": 1,
    }
    since = http.get(f"/api/v1/rooms/{room}/history", params={"since": 3}).json()
    assert [m["offset"] for m in since["messages"]] == [4, 5]
    assert since["epoch"] == page["epoch"]
    limited = http.get(f"/api/v1/rooms/{room}/history", params={"since": 1, "limit": 2}).json()
    assert [m["offset"] for m in limited["messages"]] == [2, 3]
    assert http.get(f"/api/v1/rooms/{room}/history", params={"since": 5}).json()["messages"] == []
    empty = http.get(f"/api/v1/rooms/{room}/history?since=&limit=").json()
    assert [m["offset"] for m in empty["messages"]] == [1, 2, 3, 4, 5]
    for bad in ({"since": "x"}, {"since": "-1"}, {"limit": "many"}):
        assert_error(http.get(f"/api/v1/rooms/{room}/history", params=bad), 400, "invalid_frame")


def test_history_is_bounded_by_history_size(start_server: Callable[..., ServerProcess]) -> None:
    """With --history-size 3 only the last 3 messages are retained."""
    server = start_server("--history-size", "3")
    with server.http() as http:
        for n in range(1, 8):
            http.post("/api/v1/rooms/h/messages", json={"topic": "t", "payload": n})
        page = http.get("/api/v1/rooms/h/history").json()
        assert [m["payload"] for m in page["messages"]] == [5, 6, 7]
        page = http.get("/api/v1/rooms/h/history", params={"limit": 100}).json()
        assert len(page["messages"]) == 3


async def test_delete_member_kicks_with_4499(
    server: ServerProcess, api: httpx.AsyncClient, room: str
) -> None:
    """DELETE member answers 204; that member is closed with 4499 and the others see it leave."""
    alice = await member(server, room, "alice")
    bob = await member(server, room, "bob")
    await alice.recv_topic("presence.join")
    response = await api.delete(f"/api/v1/rooms/{room}/members/bob")
    assert response.status_code == 204
    assert response.content == b""
    code, frames = await bob.closed()
    assert code == 4499
    assert [f["payload"]["code"] for f in frames if f["topic"] == "error"] == ["kicked"]
    assert await alice.recv() == {
        "topic": "presence.leave",
        "payload": {"username": "bob"},
        "room": room,
    }
    assert (await api.get(f"/api/v1/rooms/{room}/members")).json() == {"members": ["alice"]}
    await alice.close()


def test_delete_absent_member_is_404(http: httpx.Client, room: str) -> None:
    """DELETE of a member connected nowhere is 404 member_not_found."""
    assert_error(http.delete(f"/api/v1/rooms/{room}/members/zed"), 404, "member_not_found")


def test_unknown_path_and_method_are_json_errors(http: httpx.Client) -> None:
    """An unknown /api path is a JSON 404; a wrong method is a JSON 405."""
    response = http.get("/api/v1/nothing-here")
    assert_error(response, 404, "not_found")
    response = http.put("/api/v1/rooms")
    assert response.status_code == 405
    assert response.json()["error"]["message"]
    for method, path in [("GET", "/api/v1/rooms/r/messages"), ("POST", "/healthz")]:
        response = http.request(method, path)
        assert response.status_code == 405
        assert response.json()["error"]["message"]
    assert_error(http.get("/no/such/page"), 404, "not_found")


def test_healthz_and_readyz(http: httpx.Client) -> None:
    """/healthz and /readyz answer 200 with a JSON status."""
    health = http.get("/healthz")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    ready = http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"


async def test_metrics_exposes_prometheus_text(
    server: ServerProcess, api: httpx.AsyncClient, room: str
) -> None:
    """/metrics is Prometheus text with connection, frame and publication counters."""
    alice = await member(server, room, "alice")
    await alice.send({"topic": "t", "payload": 1})
    await alice.recv()
    response = await api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    values = {}
    for line in response.text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    assert values["roomcast_connections"] >= 1
    assert values["roomcast_frames_in_total"] >= 1
    assert values["roomcast_frames_out_total"] >= 1
    assert values["roomcast_publications_total"] >= 1
    assert "roomcast_rooms" in values
    assert "# TYPE roomcast_frames_in_total counter" in response.text
    await alice.close()


async def test_api_key_is_required_when_configured(
    start_server: Callable[..., ServerProcess],
) -> None:
    """With --api-key every rooms call needs the Bearer key: 401 without or wrong, 2xx with."""
    server = start_server("--api-key", "s3cret,other")
    client = await Client.connect(server.ws_url, "alice", "k")
    await client.join()
    with server.http() as http:
        calls = [
            ("GET", "/api/v1/rooms", None),
            ("GET", "/api/v1/rooms/k/members", None),
            ("GET", "/api/v1/rooms/k/history", None),
            ("POST", "/api/v1/rooms/k/messages", {"topic": "t", "payload": 1}),
            ("DELETE", "/api/v1/rooms/k/members/nobody", None),
        ]
        for method, path, body in calls:
            for headers in (
                {},
                {"authorization": "Bearer wrong"},
                {"authorization": "s3cret"},
                {"authorization": "Basic s3cret"},
            ):
                response = http.request(method, path, json=body, headers=headers)
                assert_error(response, 401, "unauthenticated")
        await client.barrier()
        good = {"authorization": "Bearer s3cret"}
        assert http.get("/api/v1/rooms", headers=good).status_code == 200
        assert http.get("/api/v1/rooms/k/members", headers=good).json() == {"members": ["alice"]}
        response = http.post(
            "/api/v1/rooms/k/messages", json={"topic": "t", "payload": 1}, headers=good
        )
        assert response.status_code == 202
        assert (await client.recv())["from"] == "$server"
        other = {"authorization": "Bearer other"}
        assert http.get("/api/v1/rooms/k/history", headers=other).status_code == 200
        assert http.delete("/api/v1/rooms/k/members/alice", headers=good).status_code == 204
        assert (await client.closed())[0] == 4499
        # Health endpoints stay open.
        assert http.get("/healthz").status_code == 200
        assert http.get("/readyz").status_code == 200


async def test_kick_then_rejoin(server: ServerProcess, api: httpx.AsyncClient, room: str) -> None:
    """A kicked member can join again under the same name."""
    bob = await member(server, room, "bob")
    assert (await api.delete(f"/api/v1/rooms/{room}/members/bob")).status_code == 204
    assert (await bob.closed())[0] == 4499
    async with asyncio.timeout(RECV_TIMEOUT):
        again = await member(server, room, "bob")
    assert (await api.get(f"/api/v1/rooms/{room}/members")).json() == {"members": ["bob"]}
    await again.close()


async def test_room_and_username_with_slash_and_percent(
    server: ServerProcess, api: httpx.AsyncClient
) -> None:
    """Every valid name works in API paths once percent-encoded, `/`, `%` and non-ASCII too."""
    room, name = f"a/b%41é-{uuid.uuid4().hex[:6]}", "al/ice%2F"
    path = "/api/v1/rooms/" + quote(room, safe="")
    alice = await member(server, room, name)
    assert (await api.get(f"{path}/members")).json() == {"members": [name]}
    response = await api.post(f"{path}/messages", json={"topic": "t", "payload": 1, "to": name})
    assert response.status_code == 202
    assert (await alice.recv())["room"] == room
    history = (await api.get(f"{path}/history")).json()
    assert [m["to"] for m in history["messages"]] == [name]
    response = await api.delete(f"{path}/members/" + quote(name, safe=""))
    assert response.status_code == 204
    assert (await alice.closed())[0] == 4499


@pytest.mark.parametrize("segment", ["%FF", "r%ED%A0%80", "%C3"])
async def test_names_in_api_paths_that_are_not_utf8_are_400(
    server: ServerProcess, api: httpx.AsyncClient, segment: str
) -> None:
    """A room or username whose percent-encoded bytes are not UTF-8 is refused (400
    `invalid_frame`), not taken for a name of replacement characters."""
    for method, path, body in [
        ("POST", f"/api/v1/rooms/{segment}/messages", {"topic": "t", "payload": 1}),
        ("GET", f"/api/v1/rooms/{segment}/members", None),
        ("GET", f"/api/v1/rooms/{segment}/history", None),
        ("DELETE", f"/api/v1/rooms/r1/members/{segment}", None),
    ]:
        response = await api.request(method, path, json=body)
        assert response.status_code == 400, (method, path, response.text)
        assert response.json()["error"]["code"] == "invalid_frame"


def test_body_over_max_message_size_is_413(http: httpx.Client, room: str) -> None:
    """A POST body larger than --max-message-size is a 413 and publishes nothing."""
    body = {"topic": "t", "payload": "x" * 70000}
    response = http.post(f"/api/v1/rooms/{room}/messages", json=body)
    assert_error(response, 413, "message_too_big")
    assert http.get(f"/api/v1/rooms/{room}/history").json()["messages"] == []
