"""Graceful shutdown on SIGTERM: stop accepting, 1012 to clients, presence left at once, work in
flight finished, exit within --shutdown-timeout; a rolling restart loses no message."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator

import pytest
import websockets

from tests.harness import Client, RedisProcess, ServerProcess
from tests.integration.reliability import (
    Publisher,
    RawClient,
    ResumingClient,
)

StartServer = Callable[..., ServerProcess]

STUCK = 600  # messages of 8 KiB that a stalled client never reads


@pytest.fixture
def slow_app() -> Iterator[Callable[..., ServerProcess]]:
    """Start tests/integration/slow_app.py servers; all are stopped at the end."""
    servers: list[ServerProcess] = []

    def start(*args: str) -> ServerProcess:
        server = ServerProcess(["--port", "0", *args], module="tests.integration.slow_app")
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


async def test_sigterm_closes_clients_with_1012_and_stops_accepting(
    start_server: StartServer,
) -> None:
    """On SIGTERM every client is closed with 1012, new connections are refused, and the
    process exits within --shutdown-timeout."""
    server = start_server("--shutdown-timeout", "3")
    assert server.log is not None
    alice = await Client.connect(server.ws_url, "alice", "r1")
    await alice.join()
    bob = await Client.connect(server.ws_url, "bob", "r2")
    await bob.join()
    server.signal(signal.SIGTERM)
    assert (await alice.closed())[0] == 1012
    assert (await bob.closed())[0] == 1012
    with pytest.raises((OSError, websockets.WebSocketException)):
        await Client.connect(server.ws_url, "carol", "r1")
    await asyncio.to_thread(server.wait, 3 + 4)
    text = server.log.text()
    assert "roomcast.stopping" in text
    assert "node.stopped" in text
    assert "reason=shutdown" in text


async def test_shutdown_is_bounded_by_a_client_that_never_reads(
    start_server: StartServer,
) -> None:
    """A client that stops reading and never answers the close cannot hold the process past
    --shutdown-timeout; a well-behaved client in the same room still gets 1012."""
    server = start_server("--shutdown-timeout", "2", "--outbound-buffer", "16777216")
    stuck = await RawClient.connect(server, "stuck", "r", rcvbuf=4096)
    good = await Client.connect(server.ws_url, "good", "r")
    await good.join()
    with server.http() as http:
        for _ in range(STUCK):  # more than the kernel buffers take: the server holds some
            assert (
                http.post(
                    "/api/v1/rooms/r/messages", json={"topic": "t", "payload": "z" * 8192}
                ).status_code
                == 202
            )
    async with asyncio.timeout(10):
        while True:
            frame = await good.recv()
            if frame.get("offset") == STUCK:
                break
    server.signal(signal.SIGTERM)
    assert (await good.closed())[0] == 1012
    await asyncio.to_thread(server.wait, 2 + 4)  # the bound, plus room for a loaded machine
    stuck.close()


async def test_frame_in_flight_is_answered_before_the_close(
    slow_app: Callable[..., ServerProcess],
) -> None:
    """A frame whose handler is running when SIGTERM arrives is finished and acknowledged
    before the connection is closed with 1012."""
    server = slow_app("--shutdown-timeout", "5")
    assert server.log is not None
    client = await Client.connect(server.ws_url, "alice", "r")
    await client.join()
    await client.send({"topic": "slow", "payload": 0.5, "id": 7})
    await asyncio.to_thread(server.log.wait_for, r"slow\.started", 5)
    server.signal(signal.SIGTERM)
    code, frames = await client.closed()
    assert code == 1012
    assert {"topic": "ack", "payload": {"id": 7, "offset": 1}} in frames  # the broadcast's
    await asyncio.to_thread(server.wait, 5 + 2)
    assert "slow.done username=alice offset=1" in server.log.text()


async def test_sigterm_leaves_presence_at_once_on_other_nodes(
    start_server: StartServer, redis_server: RedisProcess
) -> None:
    """With two nodes on one Redis, a member of the stopping node is announced gone on the
    other node at once, not after its presence lease (30 s here)."""
    flags = ("--broker", redis_server.url, "--presence-ttl", "30")
    a = start_server(*flags, "--node-id", "a")
    b = start_server(*flags, "--node-id", "b")
    leaving = await Client.connect(a.ws_url, "leaving", "r")
    await leaving.join()
    staying = await Client.connect(b.ws_url, "staying", "r")
    assert (await staying.join())["payload"]["members"] == ["leaving", "staying"]
    a.signal(signal.SIGTERM)
    assert (await leaving.closed())[0] == 1012
    assert await staying.recv(timeout=5) == {
        "topic": "presence.leave",
        "payload": {"username": "leaving"},
        "room": "r",
    }
    with b.http() as http:
        assert http.get("/api/v1/rooms/r/members").json() == {"members": ["staying"]}
    await asyncio.to_thread(a.wait, 5 + 2)
    await staying.close()


async def test_rolling_restart_loses_no_message(
    start_server: StartServer, redis_server: RedisProcess
) -> None:
    """Two nodes behind one Redis are restarted one after the other while a publisher keeps
    publishing; members reconnect to the live node with since+epoch and each sees every
    offset exactly once."""
    flags = ("--broker", redis_server.url, "--history-size", "5000")
    nodes = {
        "a": start_server(*flags, "--node-id", "a"),
        "b": start_server(*flags, "--node-id", "b"),
    }
    alive = dict(nodes)

    def ws_urls() -> list[str]:
        return [n.ws_url for n in alive.values()]

    def http_urls() -> list[str]:
        return [n.url for n in alive.values()]

    members = [ResumingClient(lambda i=i: _rotate(ws_urls(), i), f"m{i}", "room") for i in range(6)]
    for member in members:
        await member.connect()
    stop = asyncio.Event()
    readers = [asyncio.create_task(m.run(stop)) for m in members]
    publisher = Publisher(http_urls, "room", concurrency=2)
    publishing = asyncio.create_task(publisher.run())
    try:
        await publisher.wait_count(50)
        for name in ("a", "b"):
            old = alive.pop(name)
            old.signal(signal.SIGTERM)
            await asyncio.to_thread(old.wait, 10)
            count = len(publisher.offsets)
            await publisher.wait_count(count + 50)
            alive[name] = start_server(*flags, "--node-id", f"{name}2")
            await publisher.wait_count(count + 100)
    finally:
        publisher.stop.set()
        await asyncio.wait_for(publishing, 20)
    last = max(publisher.offsets)
    for member in members:
        await member.wait_offset(last)
    stop.set()
    for member in members:
        if member.client is not None:
            await member.client.close()
    await asyncio.wait_for(asyncio.gather(*readers), 10)
    for member in members:
        member.assert_exactly_once(1, last)
        assert 1012 in member.closes or len(member.welcomes) == 1, member.closes
    assert sum(len(m.welcomes) > 1 for m in members) >= 3


def _rotate(urls: list[str], i: int) -> list[str]:
    """Spread members over the nodes: member i tries node i mod n first."""
    if not urls:
        return urls
    k = i % len(urls)
    return urls[k:] + urls[:k]


@pytest.mark.parametrize("fast_path", ["true", "false"])
async def test_a_handlers_context_variables_survive_its_waits(
    slow_app: Callable[..., ServerProcess], fast_path: str
) -> None:
    """A context variable a handler sets before it first waits is still set after the wait,
    on the direct receive path as on the plain one."""
    server = slow_app("--fast-path", fast_path)
    alice = await Client.connect(server.ws_url, "alice", "r1")
    await alice.join()
    for value in ("one", "two"):
        await alice.send({"topic": "context", "payload": value, "id": value})
        seen = await alice.recv_topic("context.seen")
        assert seen["payload"] == value
        ack = await alice.recv_topic("ack")
        assert ack["payload"]["id"] == value
    await alice.close()
