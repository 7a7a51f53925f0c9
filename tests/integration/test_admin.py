"""The admin page's server side on one node: when it is served, who may read the cluster
stats, and the live feed (its key, its frames, a watched room's members and messages)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest
import websockets

from tests.harness import RECV_TIMEOUT, Client, RedisProcess, ServerProcess
from tests.integration.test_cli import run_cli

StartServer = Callable[..., ServerProcess]
KEY = "admin-test-key-0123456789"
BEARER = {"Authorization": f"Bearer {KEY}"}


def feed_url(server: ServerProcess) -> str:
    return server.url.replace("http://", "ws://") + "/api/v1/admin/feed"


@contextlib.asynccontextmanager
async def feed(
    server: ServerProcess, key: str | None = KEY, **kwargs: Any
) -> AsyncIterator[Client]:
    """A feed connection, authenticated with `key` (none sent when None)."""
    ws = await websockets.connect(feed_url(server), open_timeout=RECV_TIMEOUT, **kwargs)
    client = Client(ws)
    try:
        if key is not None:
            await client.send({"topic": "auth", "payload": {"key": key}})
        yield client
    finally:
        await client.close()


@pytest.fixture
def keyed(start_server: StartServer) -> ServerProcess:
    """A memory-broker server with an API key (which turns the admin on)."""
    return start_server("--api-key", KEY)


def test_admin_is_off_without_flag_or_key(server: ServerProcess) -> None:
    """By default neither the page, its files, the stats nor the feed exist."""
    with server.http() as http:
        for path in ("/admin", "/admin/admin.js", "/admin/admin.css", "/api/v1/admin/stats"):
            assert http.get(path).status_code == 404, path
        assert http.get("/").status_code == 200  # the demo page still is


async def test_feed_is_off_without_flag_or_key(server: ServerProcess) -> None:
    """By default the feed's upgrade is refused with 404 (no such WebSocket route)."""
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(feed_url(server), open_timeout=RECV_TIMEOUT)
    assert refused.value.response.status_code == 404


def test_page_and_assets_are_served_with_a_strict_policy(keyed: ServerProcess) -> None:
    """An API key turns the page on; every asset comes from roomcast, nothing may frame it."""
    with keyed.http() as http:
        page = http.get("/admin")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY"
        assert "/admin/admin.js" in page.text
        assert "http" not in page.text.replace("http-equiv", "")  # nothing from elsewhere
        for path, kind in (
            ("/admin/admin.js", "text/javascript"),
            ("/admin/admin.css", "text/css"),
        ):
            asset = http.get(path)
            assert asset.status_code == 200, path
            assert asset.headers["content-type"].startswith(kind)


async def test_stats_need_the_key_and_show_this_node(keyed: ServerProcess, room: str) -> None:
    """Without the key 401; with it the cluster view lists this node with its connection."""
    alice = await Client.connect(keyed.ws_url, "alice", room)
    await alice.join()
    async with httpx.AsyncClient(base_url=keyed.url, timeout=RECV_TIMEOUT) as http:
        refused = await http.get("/api/v1/admin/stats")
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthenticated"
        wrong = await http.get("/api/v1/admin/stats", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        # The node measures itself every second: read until its message counts alice.
        async with asyncio.timeout(10):
            while True:
                view = (await http.get("/api/v1/admin/stats", headers=BEARER)).json()
                if view["totals"]["connections"] == 1:
                    break
                await asyncio.sleep(0.2)
    assert set(view) == {"time", "nodes", "totals", "rooms", "disconnects"}
    (node,) = view["nodes"]
    assert node["connections"] == 1
    assert node["rooms"] == 1
    assert node["broker"] is True
    assert node["uptime"] >= 0
    assert {"roomID": room, "members": 1, "rate": 0.0} in view["rooms"]
    await alice.close()


def test_admin_flag_without_key_serves_loopback(start_server: StartServer) -> None:
    """`--admin` alone on loopback: the page and the stats answer without a key."""
    server = start_server("--admin")
    with server.http() as http:
        assert http.get("/admin").status_code == 200
        assert http.get("/api/v1/admin/stats").status_code == 200


def test_admin_without_key_beyond_loopback_does_not_start() -> None:
    """`--admin --host 0.0.0.0` without a key stops with a message and exit code 2."""
    result = run_cli("serve", "--admin", "--host", "0.0.0.0", "--port", "0")
    assert result.returncode == 2
    assert "--api-key" in result.stderr


def test_admin_false_turns_it_off_despite_a_key(start_server: StartServer) -> None:
    """`--admin false` with an API key: no page (the HTTP API still answers)."""
    server = start_server("--api-key", KEY, "--admin", "false")
    with server.http() as http:
        assert http.get("/admin").status_code == 404
        assert http.get("/api/v1/rooms", headers=BEARER).status_code == 200


@pytest.mark.parametrize(
    ("first", "why"),
    [
        ({"topic": "auth", "payload": {"key": "wrong"}}, "wrong key"),
        ({"topic": "auth", "payload": {}}, "no key"),
        ({"topic": "watch", "payload": {"roomID": "r1"}}, "not auth"),
        ("not json", "invalid JSON"),
        (b"\x00binary", "binary frame"),
    ],
)
async def test_feed_refuses_without_the_key(keyed: ServerProcess, first: Any, why: str) -> None:
    """A first frame that is not `auth` with a configured key: error frame, then 4401."""
    async with feed(keyed, key=None) as client:
        await client.send(first)
        code, frames = await client.closed()
    assert code == 4401, why
    assert [f["payload"]["code"] for f in frames] == ["unauthenticated"], why


async def test_feed_refuses_a_foreign_origin(keyed: ServerProcess) -> None:
    """A page of another site may not open the feed, key or not (1008)."""
    async with feed(keyed, None, additional_headers={"Origin": "http://evil.example"}) as client:
        code, frames = await client.closed()
    assert code == 1008
    assert frames[0]["payload"]["code"] == "forbidden"


async def test_feed_answers_bad_frames_and_stays_open(keyed: ServerProcess) -> None:
    """After auth, a bad frame gets an error frame and the feed goes on."""
    async with feed(keyed) as client:
        assert (await client.recv_topic("ready"))["payload"]["node"]
        cases = [
            ("{", "invalid_json"),
            ('{"topic": "watch"}', "invalid_frame"),
            ('{"topic": "shout", "payload": {}}', "unknown_topic"),
            ('{"topic": "watch", "payload": {"roomID": ""}}', "bad_request"),
            ('{"topic": "watch", "payload": {"roomID": 7}}', "bad_request"),
        ]
        for raw, code in cases:
            await client.send(raw)
            error = await client.recv_topic("error")
            assert error["payload"]["code"] == code, raw
        await client.ws.send(b"\x01")
        assert (await client.recv_topic("error"))["payload"]["code"] == "invalid_frame"
        assert (await client.recv_topic("stats"))["payload"]["totals"]["nodes"] == 1


async def test_feed_tails_a_watched_room_and_sees_a_kick(keyed: ServerProcess, room: str) -> None:
    """Watching a room: its members and last messages at once, each new message once in
    order, a kicked member gone from the list and counted under 4499."""
    async with httpx.AsyncClient(base_url=keyed.url, timeout=RECV_TIMEOUT, headers=BEARER) as api:
        for n in (1, 2):
            await api.post(f"/api/v1/rooms/{room}/messages", json={"topic": "t", "payload": n})
        bob = await Client.connect(keyed.ws_url, "bob", room)
        await bob.join()
        async with feed(keyed) as client:
            await client.recv_topic("ready")
            await client.send({"topic": "watch", "payload": {"roomID": room}})
            first = await client.recv_topic("room")
            assert first["room"] == room
            assert first["payload"]["members"] == ["bob"]
            assert [m["payload"] for m in first["payload"]["messages"]] == [1, 2]
            assert first["payload"]["offset"] == 2

            await bob.send({"topic": "chat", "payload": {"text": "hi"}})
            await api.post(f"/api/v1/rooms/{room}/messages", json={"topic": "t", "payload": 4})
            seen: list[Any] = []
            async with asyncio.timeout(RECV_TIMEOUT):
                while len(seen) < 2:
                    seen += (await client.recv_topic("tail"))["payload"]["messages"]
            assert [(m["offset"], m["from"]) for m in seen] == [(3, "bob"), (4, "$server")]

            assert (await api.delete(f"/api/v1/rooms/{room}/members/bob")).status_code == 204
            code, _ = await bob.closed()
            assert code == 4499
            async with asyncio.timeout(RECV_TIMEOUT):
                while (await client.recv_topic("room"))["payload"]["members"]:
                    pass
            async with asyncio.timeout(10):
                while (await client.recv_topic("stats"))["payload"]["disconnects"].get("4499") != 1:
                    pass


async def test_feed_without_key_answers_loopback(start_server: StartServer) -> None:
    """`--admin` without a key: the feed starts without an auth frame (loopback only)."""
    server = start_server("--admin")
    async with feed(server, key=None) as client:
        assert (await client.recv_topic("ready"))["payload"]["node"]
        stats = await client.recv_topic("stats")
        assert orjson.dumps(stats["payload"]["totals"])


async def view_nodes(http: httpx.AsyncClient) -> list[str]:
    view = (await http.get("/api/v1/admin/stats", headers=BEARER)).json()
    return [node["node"] for node in view["nodes"]]


async def test_a_node_that_shuts_down_leaves_the_view_at_once(
    start_server: StartServer, redis_server: RedisProcess
) -> None:
    """Both nodes of a cluster are in either node's view; one stopped with SIGTERM is gone
    from the other's as soon as it has exited, long before --presence-ttl (60 s here)."""
    flags = ("--broker", redis_server.url, "--api-key", KEY, "--presence-ttl", "60")
    one = start_server("--node-id", "one", *flags)
    two = start_server("--node-id", "two", *flags)
    async with httpx.AsyncClient(base_url=one.url, timeout=RECV_TIMEOUT) as http:
        # Each node puts its first message as it starts: read until both are there.
        async with asyncio.timeout(10):
            while await view_nodes(http) != ["one", "two"]:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        two.stop()
        assert await view_nodes(http) == ["one"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "--admin", "maybe"], "--admin"),
        (["serve", "--stats-interval", "-1"], "stats-interval"),
        (["serve", "--stats-interval", "soon"], "--stats-interval"),
        (["top", "--interval", "0"], "--interval"),
    ],
)
def test_bad_admin_flags_exit_2(args: list[str], message: str) -> None:
    """A bad value of an admin flag stops the command with a message and exit code 2."""
    result = run_cli(*args)
    assert result.returncode == 2, result
    assert message in result.stderr
