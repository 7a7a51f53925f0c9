"""Nodes on a Redis master found through Sentinel (`--broker redis+sentinel://...`): one order
across nodes, presence after kill -9 of a node, and a failover (the master killed, its replica
promoted) that members go through without losing or repeating an offset."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx

from tests.harness import Client, SentinelSet, ServerProcess
from tests.integration.reliability import Publisher, ResumingClient

Start = Callable[..., ServerProcess]


def node(start_server: Start, sentinel: SentinelSet, node_id: str, *flags: str) -> ServerProcess:
    return start_server("--broker", sentinel.url, "--node-id", node_id, *flags)


async def joined(server: ServerProcess, username: str, room: str = "r1") -> Client:
    client = await Client.connect(server.ws_url, username, room)
    await client.join()
    return client


async def test_one_order_and_presence_across_nodes(
    start_server: Start, sentinel_set: SentinelSet
) -> None:
    """Two members publishing on two nodes are seen by every member in one order; kill -9 of
    a third node takes its member out of presence within the bound."""
    a, b, c = (node(start_server, sentinel_set, n, "--presence-ttl", "3") for n in "abc")
    alice, bob, carol = await joined(a, "alice"), await joined(b, "bob"), await joined(c, "carol")
    for client, joins in ((alice, 2), (bob, 1)):
        for _ in range(joins):
            await client.recv_topic("presence.join")

    async def collect(client: Client) -> list[tuple[int, str, int]]:
        got: list[tuple[int, str, int]] = []
        while len(got) < 100:
            frame = await client.recv(20)
            if frame["topic"] == "chat":
                got.append((frame["offset"], frame["from"], frame["payload"]))
        return got

    collectors = [asyncio.ensure_future(collect(m)) for m in (alice, bob, carol)]
    for n in range(50):
        await alice.send({"topic": "chat", "payload": n})
        await bob.send({"topic": "chat", "payload": n})
    orders = await asyncio.wait_for(asyncio.gather(*collectors), 60)
    assert [offset for offset, _, _ in orders[0]] == list(range(1, 101))
    for sender in ("alice", "bob"):
        assert [n for _, s, n in orders[0] if s == sender] == list(range(50))
    assert orders[1] == orders[0] == orders[2]
    killed = time.monotonic()
    c.kill()
    leave = {"topic": "presence.leave", "payload": {"username": "carol"}, "room": "r1"}
    assert await alice.recv_topic("presence.leave", 10) == leave
    assert await bob.recv_topic("presence.leave", 10) == leave
    assert time.monotonic() - killed < 6  # the bound for --presence-ttl 3, with slack
    async with httpx.AsyncClient(base_url=a.url) as http:
        members = (await http.get("/api/v1/rooms/r1/members")).json()["members"]
    assert members == ["alice", "bob"]
    await alice.close()
    await bob.close()


async def wait_status(server: ServerProcess, status: int, timeout: float = 20) -> None:
    """Poll /readyz until it answers `status` (there is no event to wait on)."""
    async with httpx.AsyncClient(base_url=server.url) as http, asyncio.timeout(timeout):
        while (await http.get("/readyz")).status_code != status:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_failover_keeps_every_offset_once(
    start_server: Start, sentinel_set: SentinelSet
) -> None:
    """kill -9 of the master; the Sentinel promotes the replica; publishing resumes through
    both nodes; members stay connected (or resume with since+epoch) and each has every offset
    exactly once; no offset is given twice."""
    a = node(start_server, sentinel_set, "a", "--history-size", "5000")
    b = node(start_server, sentinel_set, "b", "--history-size", "5000")
    staying = [
        ResumingClient(lambda: [a.ws_url], "alice", "room"),
        ResumingClient(lambda: [b.ws_url], "bob", "room"),
    ]
    resuming = ResumingClient(lambda: [b.ws_url, a.ws_url], "carol", "room")
    members = [*staying, resuming]
    for member in members:
        await member.connect()
    stop = asyncio.Event()
    readers = [asyncio.create_task(m.run(stop)) for m in members]
    before = Publisher(lambda: [a.url, b.url], "room", concurrency=2)
    await asyncio.wait_for(before.run(total=60), 30)
    # Nothing in flight, everything on the replica: then the master dies.
    sentinel_set.wait_replicated()
    assert sentinel_set.master.proc is not None
    sentinel_set.master.proc.kill()
    after = Publisher(lambda: [a.url, b.url], "room", concurrency=2)
    publishing = asyncio.create_task(after.run())
    try:
        await wait_status(a, 503)
        await after.wait_count(20, timeout=30)
        assert sentinel_set.master_port() == sentinel_set.replica.port
        assert resuming.client is not None
        await resuming.client.close()  # comes back with since+epoch
        await after.wait_count(len(after.offsets) + 40)
    finally:
        after.stop.set()
        await asyncio.wait_for(publishing, 20)
    offsets = sorted(before.offsets + after.offsets)
    last = offsets[-1]
    assert offsets == list(range(1, last + 1))
    assert after.failures > 0  # publishes were refused during the failover, not lost
    for member in members:
        await member.wait_offset(last)
    stop.set()
    for member in members:
        assert member.client is not None
        await member.client.close()
    await asyncio.wait_for(asyncio.gather(*readers), 10)
    for member in members:
        member.assert_exactly_once(1, last)
    for member in staying:
        assert len(member.welcomes) == 1
    assert [w["recovered"] for w in resuming.welcomes[1:]] == [True]
    await wait_status(a, 200)
    await wait_status(b, 200)
