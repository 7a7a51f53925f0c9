"""Crash: after kill -9 of a node, its members reconnect to another node and recover every
message published meanwhile (Redis broker)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from tests.harness import RedisProcess, ServerProcess
from tests.integration.reliability import Publisher, ResumingClient

StartServer = Callable[..., ServerProcess]


async def test_members_of_a_killed_node_recover_on_another(
    start_server: StartServer, redis_server: RedisProcess
) -> None:
    """kill -9 of node a while a publisher keeps publishing through node b: a's members see
    the connection drop, resume on b with since+epoch (taking over their usernames under the
    default --on-duplicate reject) and each sees every offset exactly once; b's members never
    notice."""
    flags = ("--broker", redis_server.url, "--history-size", "5000")
    a = start_server(*flags, "--node-id", "a")
    b = start_server(*flags, "--node-id", "b")
    alive = {"a": a, "b": b}

    def urls_from(first: str) -> Callable[[], list[str]]:
        def urls() -> list[str]:
            order = [first, *(n for n in alive if n != first)]
            return [alive[n].ws_url for n in order if n in alive]

        return urls

    on_a = [ResumingClient(urls_from("a"), f"a{i}", "room") for i in range(4)]
    on_b = [ResumingClient(urls_from("b"), f"b{i}", "room") for i in range(2)]
    members = on_a + on_b
    for member in members:
        await member.connect()
    stop = asyncio.Event()
    readers = [asyncio.create_task(m.run(stop)) for m in members]
    publisher = Publisher(lambda: [b.url], "room", concurrency=2)
    publishing = asyncio.create_task(publisher.run())
    try:
        await publisher.wait_count(50)
        del alive["a"]
        a.kill()
        await publisher.wait_count(len(publisher.offsets) + 150)
    finally:
        publisher.stop.set()
        await asyncio.wait_for(publishing, 20)
    last = max(publisher.offsets)
    for member in members:
        await member.wait_offset(last)
    with b.http() as http:
        listed = http.get("/api/v1/rooms/room/members").json()["members"]
    assert listed == sorted(m.username for m in members)
    stop.set()
    for member in members:
        if member.client is not None:
            await member.client.close()
    await asyncio.wait_for(asyncio.gather(*readers), 10)
    for member in members:
        member.assert_exactly_once(1, last)
    for member in on_a:
        assert len(member.welcomes) == 2, member.welcomes
        assert member.welcomes[1]["recovered"] is True
        assert member.closes[0] == 1006, member.closes
    for member in on_b:
        assert len(member.welcomes) == 1
