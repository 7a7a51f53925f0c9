"""Many roomcast processes sharing one real redis-server behave as one server."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import websockets

from tests.harness import READY, Client, RedisProcess, ServerProcess, logged_once_at_least

Start = Callable[..., ServerProcess]


def node(start_server: Start, redis: RedisProcess, node_id: str, *flags: str) -> ServerProcess:
    return start_server("--broker", redis.url, "--node-id", node_id, *flags)


async def joined(server: ServerProcess, username: str, room: str = "r1", **params: Any) -> Client:
    client = await Client.connect(server.ws_url, username, room, **params)
    await client.join()
    return client


async def chat_of(client: Client, count: int, timeout: float = 60) -> list[tuple[int, Any]]:
    """The first `count` `chat` messages `client` receives, as (offset, payload)."""
    got: list[tuple[int, Any]] = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            frame = await client.recv(30)
            if frame["topic"] == "chat":
                got.append((frame["offset"], frame["payload"]))
    return got


async def close_all(clients: list[Client]) -> None:
    """Close many clients at once, reading what still arrives so that no close stalls."""

    async def drain(client: Client) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                await client.ws.recv()

    async with asyncio.timeout(20):
        drains = [asyncio.ensure_future(drain(c)) for c in clients]
        await asyncio.gather(*(c.close() for c in clients))
        await asyncio.gather(*drains)


async def test_a_username_is_free_again_once_its_close_completed(
    start_server: Start, redis_server: RedisProcess
) -> None:
    """A client whose close handshake completed has left the room on every node: it connects
    again at once under its username, to the same node or the other, and is welcomed (the
    node answers a close frame once the leave went through Redis)."""
    a = node(start_server, redis_server, "a")
    b = node(start_server, redis_server, "b")
    for i in range(20):
        first, then = (a, a) if i < 10 else (a, b)
        alice = await joined(first, "alice", f"again-{i}")
        await alice.close()
        again = await Client.connect(then.ws_url, "alice", f"again-{i}")
        welcome = await again.recv()
        assert welcome["topic"] == "welcome", (i, welcome)
        await again.close()


async def test_messages_and_presence_across_two_nodes(
    start_server: Start, redis_server: RedisProcess
) -> None:
    """Members on two nodes see each other's messages, joins, leaves and member lists."""
    a = node(start_server, redis_server, "a")
    b = node(start_server, redis_server, "b")
    alice = await joined(a, "alice")
    bob = await Client.connect(b.ws_url, "bob", "r1")
    welcome = await bob.join()
    assert welcome["payload"]["members"] == ["alice", "bob"]
    assert await alice.recv() == {
        "topic": "presence.join",
        "payload": {"username": "bob"},
        "room": "r1",
    }
    await alice.send({"topic": "chat", "payload": "hi", "id": 1})
    expected = {"topic": "chat", "payload": "hi", "room": "r1", "from": "alice", "offset": 1}
    assert await alice.recv() == expected
    assert await alice.recv() == {"topic": "ack", "payload": {"id": 1, "offset": 1}}
    assert await bob.recv() == expected
    await bob.send({"topic": "chat", "payload": "yo"})
    assert (await alice.recv())["offset"] == 2
    await alice.send({"topic": "presence", "payload": {}})
    assert await alice.recv() == {
        "topic": "presence",
        "payload": {"members": ["alice", "bob"]},
        "room": "r1",
    }
    async with httpx.AsyncClient(base_url=b.url) as http:
        rooms = (await http.get("/api/v1/rooms")).json()
        assert rooms == {"rooms": [{"roomID": "r1", "members": ["alice", "bob"]}]}
    await bob.close()
    assert await alice.recv() == {
        "topic": "presence.leave",
        "payload": {"username": "bob"},
        "room": "r1",
    }
    await alice.close()


async def test_pod_a_pod_b_command_and_kick(
    start_server: Start, redis_server: RedisProcess
) -> None:
    """An HTTP `to` publish and a kick sent to node B reach a member connected to node A."""
    a = node(start_server, redis_server, "a")
    b = node(start_server, redis_server, "b")
    alice = await joined(a, "alice")
    async with httpx.AsyncClient(base_url=b.url) as http:
        answer = await http.post(
            "/api/v1/rooms/r1/messages", json={"topic": "note", "payload": 7, "to": "alice"}
        )
        assert (answer.status_code, answer.json()) == (202, {"offset": 1})
        assert await alice.recv() == {
            "topic": "note",
            "payload": 7,
            "room": "r1",
            "from": "$server",
            "to": "alice",
            "offset": 1,
        }
        missing = await http.post(
            "/api/v1/rooms/r1/messages", json={"topic": "note", "payload": 7, "to": "zed"}
        )
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "member_not_found"
        assert (await http.delete("/api/v1/rooms/r1/members/alice")).status_code == 204
        code, _ = await alice.closed()
        assert code == 4499
        members = await http.get("/api/v1/rooms/r1/members")
        assert members.json() == {"members": []}
        assert (await http.delete("/api/v1/rooms/r1/members/alice")).status_code == 404


async def test_one_order_for_every_member_on_three_nodes(
    start_server: Start, redis_server: RedisProcess
) -> None:
    """20 publishers x 50 messages over 3 nodes: every member gets 1..1000 in one order."""
    nodes = [node(start_server, redis_server, name) for name in "abc"]
    publishers = [await joined(nodes[i % 3], f"p{i}") for i in range(20)]
    observers = [await joined(n, f"o{i}") for i, n in enumerate(nodes)]
    members = publishers + observers

    async def publish(index: int, client: Client) -> None:
        for n in range(50):
            await client.send({"topic": "chat", "payload": [index, n]})

    collectors = [asyncio.ensure_future(chat_of(c, 1000)) for c in members]
    await asyncio.gather(*(publish(i, c) for i, c in enumerate(publishers)))
    orders = await asyncio.gather(*collectors)
    first = orders[0]
    assert [offset for offset, _ in first] == list(range(1, 1001))
    assert sorted(tuple(p) for _, p in first) == [(i, n) for i in range(20) for n in range(50)]
    for index in range(20):  # each publisher's messages keep their sending order
        assert [p[1] for _, p in first if p[0] == index] == list(range(50))
    for order in orders[1:]:
        assert order == first
    for client in members:
        await client.barrier()
    await close_all(members)


async def test_one_order_when_a_node_without_members_publishes_into_the_room(
    start_server: Start, redis_server: RedisProcess
) -> None:
    """Every member of r1 is on node a, whose own publishes Redis leaves to it (it alone
    receives r1); node b, with no member there, publishes into r1 through the API at the same
    time (announced). The two ways in meet on a: still one gap-free order, each sender's kept
    (four members relaying, four API callers, 50 messages each)."""
    a, b = node(start_server, redis_server, "a"), node(start_server, redis_server, "b")
    publishers = [await joined(a, f"p{i}") for i in range(4)]

    async def relay(index: int, client: Client) -> None:
        for n in range(50):
            await client.send({"topic": "chat", "payload": [index, n]})

    async def api(index: int, http: httpx.AsyncClient) -> None:
        for n in range(50):
            answer = await http.post(
                "/api/v1/rooms/r1/messages", json={"topic": "chat", "payload": [index, n]}
            )
            assert answer.status_code == 202, answer.text

    collectors = [asyncio.ensure_future(chat_of(c, 400)) for c in publishers]
    async with httpx.AsyncClient(base_url=b.url) as http:
        await asyncio.gather(
            *(api(i, http) for i in range(4, 8)), *(relay(i, c) for i, c in enumerate(publishers))
        )
    orders = await asyncio.gather(*collectors)
    first = orders[0]
    assert [offset for offset, _ in first] == list(range(1, 401))
    for index in range(8):
        assert [p[1] for _, p in first if p[0] == index] == list(range(50))
    assert all(order == first for order in orders[1:])
    await close_all(publishers)


async def test_duplicate_username_across_nodes(
    start_server: Start, redis_server: RedisProcess
) -> None:
    """A username connected on node A is refused with 4409 on node B."""
    a = node(start_server, redis_server, "a")
    b = node(start_server, redis_server, "b")
    alice = await joined(a, "alice")
    second = await Client.connect(b.ws_url, "alice", "r1")
    code, frames = await second.closed()
    assert code == 4409
    assert frames[0]["payload"]["code"] == "duplicate"
    await alice.barrier()
    await alice.close()


async def test_killed_node_members_leave_once_and_can_rejoin(
    start_server: Start, redis_server: RedisProcess
) -> None:
    """kill -9 of a node: survivors get presence.leave within the bound, announced once."""
    ttl = ("--presence-ttl", "3")
    a = node(start_server, redis_server, "a", *ttl)
    b = node(start_server, redis_server, "b", *ttl)
    c = node(start_server, redis_server, "c", *ttl)
    alice = await joined(a, "alice")
    bob = await joined(b, "bob")
    carol = await joined(c, "carol")
    for client in (alice, bob, alice):
        await client.recv_topic("presence.join")
    killed = time.monotonic()
    c.kill()
    code, _ = await carol.closed()
    assert code == 1006  # the process died: no close frame
    leave = {"topic": "presence.leave", "payload": {"username": "carol"}, "room": "r1"}
    assert await alice.recv(10) == leave
    assert await bob.recv(10) == leave
    assert time.monotonic() - killed < 6  # the bound for --presence-ttl 3, with slack
    await alice.barrier()
    await bob.barrier()
    assert await logged_once_at_least([a, b], "presence.lost", "username=carol") == 1
    async with httpx.AsyncClient(base_url=a.url) as http:
        assert (await http.get("/api/v1/rooms/r1/members")).json() == {"members": ["alice", "bob"]}
    again = await joined(a, "carol")
    assert (await alice.recv()) == {
        "topic": "presence.join",
        "payload": {"username": "carol"},
        "room": "r1",
    }
    for client in (alice, bob, again):
        await client.close()


async def test_restart_under_same_node_id_cleans_old_entries(
    start_server: Start, redis_server: RedisProcess
) -> None:
    """A node restarted under its id removes its old members at once, long before the lease."""
    a = node(start_server, redis_server, "a", "--presence-ttl", "120")
    b = node(start_server, redis_server, "b", "--presence-ttl", "120")
    bob = await joined(b, "bob")
    await joined(a, "alice")
    await bob.recv_topic("presence.join")
    a.kill()
    node(start_server, redis_server, "a", "--presence-ttl", "120")
    assert await bob.recv(10) == {
        "topic": "presence.leave",
        "payload": {"username": "alice"},
        "room": "r1",
    }
    alice = await joined(b, "alice")
    await alice.close()
    await bob.close()


async def wait_status(server: ServerProcess, path: str, status: int, timeout: float = 15) -> None:
    """Poll `path` until it answers `status` (there is no event to wait on)."""
    async with httpx.AsyncClient(base_url=server.url) as http, asyncio.timeout(timeout):
        while (await http.get(path)).status_code != status:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_redis_restart_outage_and_resumption(
    start_server: Start, redis_server: RedisProcess
) -> None:
    """While redis-server is down: 503 and `unavailable`; once back, delivery resumes."""
    a = node(start_server, redis_server, "a")
    b = node(start_server, redis_server, "b")
    alice = await joined(a, "alice")
    carol = await joined(b, "carol")
    bob = await joined(b, "bob")
    await alice.recv_topic("presence.join")
    await alice.recv_topic("presence.join")
    await bob.send({"topic": "chat", "payload": 1, "id": 1})
    assert (await alice.recv())["offset"] == 1
    await bob.recv_topic("ack")
    # Stop redis-server with its data saved, as a persistent Redis restarts.
    assert redis_server.proc is not None
    with redis_server.proc as proc:
        reader, writer = await asyncio.open_connection("127.0.0.1", redis_server.port)
        writer.write(b"SHUTDOWN SAVE\r\n")
        await writer.drain()
        await reader.read()
        writer.close()
        proc.wait(10)
    await wait_status(a, "/readyz", 503)
    await wait_status(b, "/readyz", 503)
    await alice.send({"topic": "chat", "payload": 2, "id": 2})
    error = await alice.recv()
    assert error["topic"] == "error"
    assert error["payload"]["code"] == "unavailable"
    assert error["payload"]["id"] == 2
    async with httpx.AsyncClient(base_url=b.url) as http:
        answer = await http.post("/api/v1/rooms/r1/messages", json={"topic": "t", "payload": 0})
        assert answer.status_code == 503
        assert answer.json()["error"]["code"] == "unavailable"
    await carol.close()  # leaves while presence cannot be updated
    restarted = RedisProcess(redis_server.port)
    shutil.rmtree(restarted.dir)
    restarted.dir = redis_server.dir  # the saved data: a persistent Redis restarting
    restarted.start()
    try:
        await wait_status(a, "/readyz", 200)
        await wait_status(b, "/readyz", 200)
        await bob.send({"topic": "chat", "payload": 3, "id": 3})
        # (carol's presence.leave may come first, depending on which node is back first)
        assert await alice.recv_topic("chat") == {
            "topic": "chat",
            "payload": 3,
            "room": "r1",
            "from": "bob",
            "offset": 2,
        }
        async with httpx.AsyncClient(base_url=a.url) as http, asyncio.timeout(10):
            # carol's entry is removed once node b is back: poll, there is no event here
            members = ["alice", "bob"]
            while (await http.get("/api/v1/rooms/r1/members")).json()["members"] != members:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        await alice.close()
        await bob.close()
    finally:
        restarted.stop()


async def test_workers_share_port_and_broker(
    start_server: Start, redis_server: RedisProcess
) -> None:
    """`--workers 2`: connections land on both processes, which act as one server; the
    server logs one ready line, once both workers are."""
    server = start_server("--broker", redis_server.url, "--node-id", "w", "--workers", "2")
    assert server.log is not None
    lines = list(server.log.lines)
    ready = [i for i, line in enumerate(lines) if READY.search(line)]
    workers = [i for i, line in enumerate(lines) if "roomcast.worker_ready" in line]
    assert len(ready) == 1, lines
    assert len(workers) == 2, lines
    assert max(workers) < ready[0], lines
    assert "workers=2" in lines[ready[0]]
    pattern = re.compile(r"connection\.joined.*username=(u\d+).*node_id=(w-\d)")
    nodes: dict[str, Client] = {}
    clients: list[Client] = []
    for i in range(40):
        client = await joined(server, f"u{i}")
        clients.append(client)
        match = server.log.wait_for(rf"connection\.joined.*username=u{i}\b", 5)
        found = pattern.search(match.string)
        assert found is not None, match.string
        nodes.setdefault(found.group(2), client)
        if len(nodes) == 2:
            break
    assert sorted(nodes) == ["w-0", "w-1"]
    one, other = nodes["w-0"], nodes["w-1"]
    await one.send({"topic": "chat", "payload": "across", "id": 1})
    got = await other.recv_topic("chat")
    assert got["payload"] == "across"
    assert got["from"] == (await one.recv_topic("chat"))["from"]
    await other.send({"topic": "presence", "payload": {}})
    listed = (await other.recv_topic("presence"))["payload"]["members"]
    assert len(listed) == len(clients)
    await close_all(clients)


async def test_recovery_on_another_node(start_server: Start, redis_server: RedisProcess) -> None:
    """A member that reconnects to another node with since+epoch gets what it missed."""
    a = node(start_server, redis_server, "a")
    b = node(start_server, redis_server, "b")
    alice = await Client.connect(a.ws_url, "alice", "r1")
    welcome = await alice.join()
    async with httpx.AsyncClient(base_url=a.url) as http:
        for n in range(3):
            await http.post("/api/v1/rooms/r1/messages", json={"topic": "t", "payload": n})
        assert [(await alice.recv())["offset"] for _ in range(3)] == [1, 2, 3]
        await alice.close()
        for n in range(3, 5):
            await http.post("/api/v1/rooms/r1/messages", json={"topic": "t", "payload": n})
    again = await Client.connect(
        b.ws_url, "alice", "r1", since=3, epoch=welcome["payload"]["epoch"]
    )
    resumed = await again.join()
    assert resumed["payload"]["recovered"] is True
    assert resumed["payload"]["offset"] == 5
    assert [(await again.recv())["payload"] for _ in range(2)] == [3, 4]
    await again.barrier()
    await again.close()


def test_workers_refused_for_memory_broker() -> None:
    """`--workers 2` with memory:// exits with a message naming the fix."""
    result = subprocess.run(
        [sys.executable, "-m", "roomcast", "serve", "--port", "0", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert "redis://" in result.stderr
