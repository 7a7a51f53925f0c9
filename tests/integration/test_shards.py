"""Rooms sharded over two real redis-servers (`--broker redis://A/0,redis://B/0`): nodes behave
as one server, a dead node leaves every shard, one shard down takes only its rooms down."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from roomcast import Publisher
from roomcast.brokers.sharded import shard_of
from tests.harness import ROOT, Client, RedisProcess, ServerProcess, logged_once_at_least
from tests.integration.reliability import Publisher as HttpPublisher
from tests.integration.reliability import ResumingClient
from tests.integration.test_cluster import chat_of

Start = Callable[..., ServerProcess]


@pytest.fixture
def shards(two_redis_servers: list[RedisProcess]) -> list[RedisProcess]:
    """The two redis-servers of one test's cluster."""
    return two_redis_servers


def broker(shards: list[RedisProcess]) -> str:
    return ",".join(server.url for server in shards)


def room_on(index: int, name: str) -> str:
    """A room id starting with `name` that lives on shard `index` of two."""
    n = 0
    while shard_of(f"{name}{n}", 2) != index:
        n += 1
    return f"{name}{n}"


def node(
    start_server: Start, shards: list[RedisProcess], node_id: str, *flags: str
) -> ServerProcess:
    return start_server("--broker", broker(shards), "--node-id", node_id, *flags)


async def joined(server: ServerProcess, username: str, room: str) -> Client:
    client = await Client.connect(server.ws_url, username, room)
    await client.join()
    return client


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `roomcast serve` with `args` to its end (it is expected to refuse to start)."""
    return subprocess.run(
        [sys.executable, "-m", "roomcast", "serve", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=ROOT,
        check=False,
    )


async def test_one_order_per_room_across_two_nodes_and_two_shards(
    start_server: Start, shards: list[RedisProcess]
) -> None:
    """Publishers on two nodes in a room of each shard: every member of a room gets 1..100 in
    the same order, and each publisher's messages in its sending order."""
    a, b = node(start_server, shards, "a"), node(start_server, shards, "b")
    rooms = [room_on(0, "zero"), room_on(1, "one")]
    orders: list[list[tuple[int, Any]]] = []
    for room in rooms:
        publishers = [await joined((a, b)[i % 2], f"p{i}", room) for i in range(4)]
        observers = [await joined(n, f"o{i}", room) for i, n in enumerate((a, b))]
        members = publishers + observers

        collectors = [asyncio.ensure_future(chat_of(c, 100)) for c in members]
        for n in range(25):
            for i, client in enumerate(publishers):
                await client.send({"topic": "chat", "payload": [i, n]})
        room_orders = await asyncio.wait_for(asyncio.gather(*collectors), 60)
        first = room_orders[0]
        assert [offset for offset, _ in first] == list(range(1, 101))
        for i in range(4):
            assert [p[1] for _, p in first if p[0] == i] == list(range(25))
        assert all(order == first for order in room_orders)
        orders.append(first)
        for client in members:
            await client.close()
    # Each room's offsets live on its own server.
    for index, room in enumerate(rooms):
        reader, writer = await asyncio.open_connection("127.0.0.1", shards[index].port)
        writer.write(f"GET rc:{{{room}}}:o\r\n".encode())
        await writer.drain()
        assert await reader.readline() == b"$3\r\n"
        assert await reader.readline() == b"100\r\n"
        writer.close()


async def test_killed_node_leaves_every_shard_once_and_its_members_recover(
    start_server: Start, shards: list[RedisProcess]
) -> None:
    """kill -9 of node a, with members in a room of each shard, while publishing to both
    through node b: b's members see a's member leave each room once, within the presence
    bound; a's resuming members go on on b with since+epoch and see every offset exactly
    once."""
    flags = ("--presence-ttl", "3", "--history-size", "5000")
    a = node(start_server, shards, "a", *flags)
    b = node(start_server, shards, "b", *flags)
    rooms = [room_on(0, "zero"), room_on(1, "one")]
    alive = {"a": a, "b": b}

    def urls() -> list[str]:
        return [server.ws_url for server in alive.values()]

    resuming = [ResumingClient(urls, f"m{i}", room) for i, room in enumerate(rooms)]
    watchers = [await joined(b, "watcher", room) for room in rooms]
    carols = [await joined(a, "carol", room) for room in rooms]
    for member in resuming:
        await member.connect()
    stop = asyncio.Event()
    readers = [asyncio.create_task(m.run(stop)) for m in resuming]
    publishers = [HttpPublisher(lambda: [b.url], room, concurrency=2) for room in rooms]
    publishing = [asyncio.create_task(p.run()) for p in publishers]
    try:
        for publisher in publishers:
            await publisher.wait_count(30)
        del alive["a"]
        killed = time.monotonic()
        a.kill()
        for watcher in watchers:
            async with asyncio.timeout(10):
                while (await watcher.recv_topic("presence.leave"))["payload"] != {
                    "username": "carol"
                }:
                    pass
        assert time.monotonic() - killed < 6  # the bound for --presence-ttl 3, with slack
        for publisher in publishers:
            await publisher.wait_count(len(publisher.offsets) + 60)
    finally:
        for publisher in publishers:
            publisher.stop.set()
        await asyncio.wait_for(asyncio.gather(*publishing), 20)
    for member, publisher in zip(resuming, publishers, strict=True):
        await member.wait_offset(max(publisher.offsets))
    for room in rooms:
        assert (
            await logged_once_at_least([b], "presence.lost", "username=carol", f"room={room}") == 1
        )
    async with httpx.AsyncClient(base_url=b.url) as http:
        for i, room in enumerate(rooms):
            members = (await http.get(f"/api/v1/rooms/{room}/members")).json()["members"]
            assert members == [f"m{i}", "watcher"]
    stop.set()
    for member in resuming:
        assert member.client is not None
        await member.client.close()
    await asyncio.wait_for(asyncio.gather(*readers), 10)
    for member, publisher in zip(resuming, publishers, strict=True):
        member.assert_exactly_once(1, max(publisher.offsets))
        assert [w["recovered"] for w in member.welcomes[1:]] == [True]
    for client in watchers + carols:
        await client.close()


async def wait_ready(server: ServerProcess, body: Callable[[dict[str, Any]], bool]) -> None:
    """Poll /readyz until its answer satisfies `body` (there is no event to wait on)."""
    async with httpx.AsyncClient(base_url=server.url) as http, asyncio.timeout(15):
        while not body((await http.get("/readyz")).json()):  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_one_shard_down_takes_only_its_rooms_down(
    start_server: Start, shards: list[RedisProcess]
) -> None:
    """Shard 1 stopped (its data saved): its room answers `unavailable` (503 on the API) while
    the room of shard 0 keeps delivering; /readyz stays 200 and names the shard down; once it is
    back, its room goes on, and members of both rooms have every offset exactly once."""
    a, b = node(start_server, shards, "a"), node(start_server, shards, "b")
    up, down = room_on(0, "up"), room_on(1, "down")
    resuming = [
        ResumingClient(lambda: [a.ws_url], "alice", up),
        ResumingClient(lambda: [a.ws_url], "alice", down),
        ResumingClient(lambda: [b.ws_url], "bob", down),
    ]
    for member in resuming:
        await member.connect()
    carol = await joined(a, "carol", down)
    stop = asyncio.Event()
    readers = [asyncio.create_task(m.run(stop)) for m in resuming]
    publishers = [HttpPublisher(lambda: [b.url, a.url], room) for room in (up, down)]
    publishing = [asyncio.create_task(p.run()) for p in publishers]
    restarted = RedisProcess(shards[1].port)
    try:
        for publisher in publishers:
            await publisher.wait_count(20)
        # Stop shard 1 with its data saved, as a persistent Redis restarts.
        proc = shards[1].proc
        assert proc is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", shards[1].port)
        writer.write(b"SHUTDOWN SAVE\r\n")
        await writer.drain()
        await reader.read()
        writer.close()
        proc.wait(10)
        for server in (a, b):
            await wait_ready(server, lambda body: body.get("status") == "degraded")
        async with httpx.AsyncClient(base_url=a.url) as http:
            ready = await http.get("/readyz")
            assert ready.status_code == 200
            assert ready.json() == {
                "status": "degraded",
                "node": "a",
                "down": [f"#1 {shards[1].url}"],
            }
            answer = await http.post(
                f"/api/v1/rooms/{down}/messages", json={"topic": "t", "payload": 0}
            )
            assert answer.status_code == 503
            assert answer.json()["error"]["code"] == "unavailable"
            assert (await http.get("/api/v1/rooms")).status_code == 503
        await carol.send({"topic": "chat", "payload": "x", "id": 7})
        error = await carol.recv_topic("error")
        assert error["payload"]["code"] == "unavailable"
        # Meanwhile the other shard's room goes on.
        await publishers[0].wait_count(len(publishers[0].offsets) + 50)
        await resuming[0].wait_offset(max(publishers[0].offsets))
        stalled = len(publishers[1].offsets)
        shutil.rmtree(restarted.dir)
        restarted.dir = shards[1].dir  # the saved data: a persistent Redis restarting
        restarted.start()
        for server in (a, b):
            await wait_ready(server, lambda body: body.get("status") == "ready")
        await publishers[1].wait_count(stalled + 30)
    finally:
        for publisher in publishers:
            publisher.stop.set()
        await asyncio.wait_for(asyncio.gather(*publishing), 20)
        restarted.stop()
    for member in resuming:
        room_publisher = publishers[0] if member.room == up else publishers[1]
        await member.wait_offset(max(room_publisher.offsets))
    stop.set()
    for member in resuming:
        assert member.client is not None
        await member.client.close()
    await asyncio.wait_for(asyncio.gather(*readers), 10)
    for member in resuming:
        room_publisher = publishers[0] if member.room == up else publishers[1]
        member.assert_exactly_once(1, max(room_publisher.offsets))
        assert len(member.welcomes) == 1
    await carol.close()


def test_nodes_listing_the_servers_in_another_order_are_refused(
    start_server: Start, shards: list[RedisProcess]
) -> None:
    """A node given the servers in another order than the running nodes does not start: it
    says which server is where; once no node of the old order runs, the new order is taken."""
    a = node(start_server, shards, "a")
    swapped = ",".join(server.url for server in reversed(shards))
    result = serve("--broker", swapped)
    assert result.returncode == 2
    assert "roomcast serve: error: broker server #0" in result.stderr
    assert "is #1/2 of the broker list on the running nodes (a), but #0/2 here" in result.stderr
    assert "Traceback" not in result.stderr
    a.stop()
    start_server("--broker", swapped, "--node-id", "c")


def test_a_node_given_one_server_of_a_running_list_is_refused(
    start_server: Start, shards: list[RedisProcess]
) -> None:
    """A node given one server alone while nodes shard rooms over a list holding it does not
    start (it would look for rooms elsewhere than they do); nor does a list node while a
    node runs with that server alone."""
    a = node(start_server, shards, "a")
    for server in shards:
        result = serve("--broker", server.url)
        assert result.returncode == 2, result.stderr
        assert "of the broker list on the running nodes (a), but #0/1 here" in result.stderr
        assert "Traceback" not in result.stderr
    a.stop()
    alone = start_server("--broker", shards[1].url, "--node-id", "b")
    listed = serve("--broker", ",".join(server.url for server in shards))
    assert listed.returncode == 2, listed.stderr
    assert "is #0/1 of the broker list on the running nodes (b), but #1/2 here" in listed.stderr
    alone.stop()


BAD_URLS = {
    "empty part": ("redis://127.0.0.1:1/0,,redis://127.0.0.1:2/0", "is empty"),
    "mixed schemes": ("redis://127.0.0.1:1/0,rediss://127.0.0.1:2/0", "mixed schemes"),
    "duplicate servers": ("redis://127.0.0.1:1/0,redis://127.0.0.1:1/0", "same server"),
    "sentinel without master": ("redis+sentinel://127.0.0.1:26379", "master name is missing"),
}


@pytest.mark.parametrize(("url", "mention"), BAD_URLS.values(), ids=BAD_URLS.keys())
def test_a_bad_broker_url_exits_2_saying_why(url: str, mention: str) -> None:
    """`serve` with a malformed list or Sentinel URL exits 2 with a one-line reason."""
    result = serve("--broker", url)
    assert result.returncode == 2
    assert mention in result.stderr
    assert "Traceback" not in result.stderr


async def test_a_publisher_reaches_rooms_on_every_server(
    start_server: Start, shards: list[RedisProcess]
) -> None:
    """`roomcast.Publisher` with the same list publishes to a room of each server, where the
    nodes' members get it with that room's offsets."""
    a, b = node(start_server, shards, "a"), node(start_server, shards, "b")
    rooms = [room_on(0, "zero"), room_on(1, "one")]
    members = [await joined((a, b)[i], "m", room) for i, room in enumerate(rooms)]
    async with Publisher(broker(shards)) as publisher:
        for room, member in zip(rooms, members, strict=True):
            assert await publisher.publish(room, "news", 1) == 1
            assert await publisher.publish(room, "news", 2) == 2
            assert [(await member.recv())["offset"] for _ in range(2)] == [1, 2]
    for member in members:
        await member.close()
