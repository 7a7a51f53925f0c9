"""roomcast nodes over a real 3-master Redis Cluster (`redis+cluster://`): cross-node delivery
in one order, recovery while publishing, presence across nodes and after kill -9 of a node,
a shard that fails (only its rooms unavailable) and comes back with no loss, and a master
failover with resuming clients that count every offset exactly once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx

from tests.harness import (
    Client,
    RedisClusterProcess,
    RedisProcess,
    ServerProcess,
    logged_once_at_least,
)
from tests.integration.reliability import Publisher, ResumingClient

Start = Callable[..., ServerProcess]


def node(
    start_server: Start, cluster: RedisClusterProcess, node_id: str, *flags: str
) -> ServerProcess:
    return start_server("--broker", cluster.url, "--node-id", node_id, *flags)


def rooms_on_shards(cluster: RedisClusterProcess, count: int, prefix: str = "room") -> list[str]:
    """`count` room ids, each on a different master."""
    rooms: dict[int, str] = {}
    for i in range(1000):
        room = f"{prefix}-{i}"
        master = cluster.master_of("rc:{" + room + "}:p").port
        rooms.setdefault(master, room)
        if len(rooms) == count:
            return list(rooms.values())
    raise AssertionError("no rooms on distinct shards")


async def joined(server: ServerProcess, username: str, room: str) -> Client:
    client = await Client.connect(server.ws_url, username, room)
    await client.join()
    return client


async def last_offset(server: ServerProcess, room: str) -> int:
    async with httpx.AsyncClient(base_url=server.url) as http:
        answer = await http.get(f"/api/v1/rooms/{room}/history", params={"limit": 0})
        assert answer.status_code == 200, answer.text
        return int(answer.json()["offset"])


async def test_cross_node_delivery_in_one_order(
    start_server: Start, redis_cluster: RedisClusterProcess
) -> None:
    """Three rooms on three shards, a publisher and an observer on each of three nodes per
    room: every observer gets 1..90 of its room, and all observers of a room one order."""
    nodes = [node(start_server, redis_cluster, name) for name in "abc"]
    rooms = rooms_on_shards(redis_cluster, 3)
    observers = {
        room: [await joined(n, f"o{i}", room) for i, n in enumerate(nodes)] for room in rooms
    }
    publishers = {
        room: [await joined(n, f"p{i}", room) for i, n in enumerate(nodes)] for room in rooms
    }

    async def publish(client: Client) -> None:
        for n in range(30):
            await client.send({"topic": "chat", "payload": n, "id": n})
        acks = 0
        while acks < 30:
            if (await client.recv(10))["topic"] == "ack":
                acks += 1

    async def observe(client: Client) -> list[tuple[int, str, int]]:
        seen: list[tuple[int, str, int]] = []
        while len(seen) < 90:
            frame = await client.recv(10)
            if frame["topic"] == "chat":
                seen.append((frame["offset"], frame["from"], frame["payload"]))
        return seen

    watching = {
        room: [asyncio.ensure_future(observe(o)) for o in observers[room]] for room in rooms
    }
    await asyncio.gather(*(publish(p) for room in rooms for p in publishers[room]))
    for room in rooms:
        views = await asyncio.gather(*watching[room])
        assert [offset for offset, _, _ in views[0]] == list(range(1, 91))
        assert all(view == views[0] for view in views), room
        for name in ("p0", "p1", "p2"):  # one sender's messages keep its order
            assert [p for _, sender, p in views[0] if sender == name] == list(range(30))
    for clients in (*observers.values(), *publishers.values()):
        for client in clients:
            await client.close()


async def test_presence_across_nodes_and_after_kill_9_of_a_node(
    start_server: Start, redis_cluster: RedisClusterProcess
) -> None:
    """Members of two rooms on two shards see each other across nodes; when a node is killed,
    its member leaves both rooms within the presence bound, announced once per room."""
    ttl = ("--presence-ttl", "3")
    a, b, c = (node(start_server, redis_cluster, name, *ttl) for name in "abc")
    rooms = rooms_on_shards(redis_cluster, 2, "pres")
    alice = {room: await joined(a, "alice", room) for room in rooms}
    bob = {room: await joined(b, "bob", room) for room in rooms}
    carol = {room: await joined(c, "carol", room) for room in rooms}
    for room in rooms:
        await alice[room].recv_topic("presence.join")
        await alice[room].recv_topic("presence.join")
        await bob[room].recv_topic("presence.join")
    async with httpx.AsyncClient(base_url=a.url) as http:
        listing = (await http.get("/api/v1/rooms")).json()["rooms"]
        assert sorted(listing, key=lambda r: r["roomID"]) == [
            {"roomID": room, "members": ["alice", "bob", "carol"]} for room in sorted(rooms)
        ]
    killed = time.monotonic()
    c.kill()
    for client in carol.values():
        assert (await client.closed())[0] == 1006  # the process died: no close frame
    for room in rooms:
        leave = {"topic": "presence.leave", "payload": {"username": "carol"}, "room": room}
        assert await alice[room].recv_topic("presence.leave", 10) == leave
        assert await bob[room].recv_topic("presence.leave", 10) == leave
    assert time.monotonic() - killed < 6  # the bound for --presence-ttl 3, with slack
    for room in rooms:
        await alice[room].barrier()
        await bob[room].barrier()
        lost = await logged_once_at_least([a, b], "presence.lost", "username=carol", f"room={room}")
        assert lost == 1
    async with httpx.AsyncClient(base_url=b.url) as http:
        for room in rooms:
            members = (await http.get(f"/api/v1/rooms/{room}/members")).json()
            assert members == {"members": ["alice", "bob"]}
    for clients in (alice, bob):
        for client in clients.values():
            await client.close()


async def test_recovery_with_since_and_epoch_while_publishing(
    start_server: Start, redis_cluster: RedisClusterProcess
) -> None:
    """A member dropped three times, resuming on either node with since+epoch while two
    publishers keep publishing through both, gets every offset once, in order."""
    a = node(start_server, redis_cluster, "a", "--history-size", "2000")
    b = node(start_server, redis_cluster, "b", "--history-size", "2000")
    room = "busy"
    alice = ResumingClient(lambda: [b.ws_url, a.ws_url], "alice", room)
    await alice.connect()
    publisher = Publisher(lambda: [a.url, b.url], room, concurrency=2)
    stop = asyncio.Event()
    reader = asyncio.create_task(alice.run(stop))
    publishing = asyncio.create_task(publisher.run())
    try:
        await alice.wait_offset(20)
        for _ in range(3):
            assert alice.client is not None
            await alice.client.close()
            await publisher.wait_count(len(publisher.offsets) + 50)
            await alice.wait_offset(max(publisher.offsets) - 5)
    finally:
        publisher.stop.set()
        await asyncio.wait_for(publishing, 20)
    last = await last_offset(a, room)
    await alice.wait_offset(last)
    stop.set()
    assert alice.client is not None
    await alice.client.close()
    await asyncio.wait_for(reader, 10)
    assert len(alice.welcomes) == 4
    alice.assert_exactly_once(1, last)


def persistent_cluster(replicas: int) -> RedisClusterProcess:
    """A cluster of its own whose nodes keep every write on disk (a master killed and
    started again comes back with its data)."""
    cluster = RedisClusterProcess(masters=3, replicas=replicas)
    for redis in cluster.nodes:
        redis.args = [*redis.args, "--appendonly", "yes", "--appendfsync", "always"]
    return cluster.start()


async def publish_status(server: ServerProcess, room: str) -> int:
    async with httpx.AsyncClient(base_url=server.url) as http:
        answer = await http.post(
            f"/api/v1/rooms/{room}/messages", json={"topic": "t", "payload": 1}
        )
        return answer.status_code


async def test_a_failed_shard_makes_only_its_rooms_unavailable_and_returns_with_no_loss(
    start_server: Start,
) -> None:
    """With cluster-require-full-coverage no: a master killed (no replica) makes its rooms
    answer 503 while the other shards' rooms deliver and the node stays ready; started
    again, its rooms continue from their offsets and their members lose nothing."""
    cluster = persistent_cluster(replicas=0)
    try:
        a = node(start_server, cluster, "a")
        b = node(start_server, cluster, "b")
        down, up = rooms_on_shards(cluster, 2, "shard")
        members = {
            room: [
                ResumingClient(lambda: [a.ws_url, b.ws_url], f"m{room}", room),
                ResumingClient(lambda: [b.ws_url, a.ws_url], f"n{room}", room),
            ]
            for room in (down, up)
        }
        stop = asyncio.Event()
        readers = []
        for clients in members.values():
            for client in clients:
                await client.connect()
                readers.append(asyncio.create_task(client.run(stop)))
        for room in (down, up):
            for _ in range(5):
                assert await publish_status(a, room) == 202
        victim: RedisProcess = cluster.master_of("rc:{" + down + "}:p")
        victim.kill()
        async with asyncio.timeout(15):
            while await publish_status(b, down) != 503:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        for _ in range(5):
            assert await publish_status(b, up) == 202
            assert await publish_status(a, up) == 202
        for client in members[up]:
            await client.wait_offset(15)
        async with httpx.AsyncClient(base_url=a.url) as http:
            assert (await http.get("/readyz")).status_code == 200
        victim.start()
        cluster.wait_ok()
        async with asyncio.timeout(20):
            while await publish_status(a, down) != 202:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        last = await last_offset(b, down)
        assert last >= 6
        for room, total in ((down, last), (up, 15)):
            for client in members[room]:
                await client.wait_offset(total)
        stop.set()
        for room, total in ((down, last), (up, 15)):
            for client in members[room]:
                assert client.client is not None
                await client.client.close()
                client.assert_exactly_once(1, total)
                assert {w["epoch"] for w in client.welcomes} == {client.epoch}
        await asyncio.wait_for(asyncio.gather(*readers), 10)
    finally:
        cluster.stop()


async def test_master_failover_resuming_clients_count_every_offset_once(
    start_server: Start,
) -> None:
    """kill -9 of the master of a busy room, while two publishers publish through both nodes:
    its replica takes over, delivery resumes (gaps repaired from the stream), and members on
    both nodes see every offset once, in order, in the room's one epoch."""
    cluster = persistent_cluster(replicas=1)
    try:
        a = node(start_server, cluster, "a", "--history-size", "5000")
        b = node(start_server, cluster, "b", "--history-size", "5000")
        room = "failover"
        members = [
            ResumingClient(lambda: [a.ws_url, b.ws_url], "alice", room),
            ResumingClient(lambda: [b.ws_url, a.ws_url], "bob", room),
        ]
        stop = asyncio.Event()
        readers = []
        for client in members:
            await client.connect()
            readers.append(asyncio.create_task(client.run(stop)))
        publisher = Publisher(lambda: [a.url, b.url], room, concurrency=2)
        publishing = asyncio.create_task(publisher.run())
        try:
            await publisher.wait_count(50)
            master = cluster.master_of("rc:{" + room + "}:p")
            master.kill()
            before = len(publisher.offsets)
            await publisher.wait_count(before + 100, timeout=30)
        finally:
            publisher.stop.set()
            await asyncio.wait_for(publishing, 20)
        assert cluster.master_of("rc:{" + room + "}:p").port != master.port
        last = await last_offset(a, room)
        assert len(set(publisher.offsets)) == len(publisher.offsets)
        assert set(publisher.offsets) <= set(range(1, last + 1))
        for client in members:
            await client.wait_offset(last)
        stop.set()
        for client in members:
            assert client.client is not None
            await client.client.close()
            client.assert_exactly_once(1, last)
            assert {w["epoch"] for w in client.welcomes} == {client.epoch}
        await asyncio.wait_for(asyncio.gather(*readers), 10)
    finally:
        cluster.stop()


def test_a_bad_cluster_url_exits_2_with_the_rule() -> None:
    """`serve` with a malformed redis+cluster:// URL exits 2 naming what is wrong."""
    from tests.integration.test_cli import run_cli

    result = run_cli("serve", "--broker", "redis+cluster://h1:7000,h1")
    assert result.returncode == 2
    assert "HOST:PORT" in result.stderr
    assert "Traceback" not in result.stderr
