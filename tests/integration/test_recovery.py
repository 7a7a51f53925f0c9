"""History and recovery (PROTOCOL section 5) on both brokers: replay after a reconnect with no
gap and no duplicate while messages keep coming, retention limits, epochs, GET .../history."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from urllib.parse import urlencode

import httpx
import orjson
import pytest
import websockets

from tests.harness import Client, RedisProcess, ServerProcess
from tests.integration.reliability import Publisher, ResumingClient, poll_until, publish

StartServer = Callable[..., ServerProcess]


@pytest.fixture(params=["memory", "redis"])
def broker(request: pytest.FixtureRequest) -> str:
    """The broker URL: memory://, or a fresh redis-server."""
    if request.param == "memory":
        return "memory://"
    redis: RedisProcess = request.getfixturevalue("redis_server")
    return redis.url


async def read_offsets(client: Client, until: int) -> list[int]:
    """Offsets of the room messages a client reads until it has seen `until`."""
    offsets: list[int] = []
    while not offsets or offsets[-1] < until:
        frame = await client.recv()
        if "offset" in frame:
            offsets.append(frame["offset"])
    return offsets


async def test_resume_replays_missed_messages_while_publishing(
    start_server: StartServer, broker: str
) -> None:
    """A member resuming with since+epoch gets every later message once, in order, while four
    publishers and a relaying member keep publishing during its replay; welcome says
    recovered true."""
    server = start_server("--broker", broker, "--history-size", "2000")
    room = "busy"
    alice = ResumingClient(lambda: [server.ws_url], "alice", room)
    welcome = await alice.connect()
    assert welcome["offset"] == 0
    talker = await Client.connect(server.ws_url, "talker", room)
    await talker.join()
    publisher = Publisher(lambda: [server.url], room, concurrency=4)
    stop_talking = asyncio.Event()

    async def talk() -> None:
        n = 0
        while not stop_talking.is_set():
            n += 1
            await talker.send({"topic": "chat", "payload": n, "id": n})
            await talker.recv_topic("ack")

    stop = asyncio.Event()
    reader = asyncio.create_task(alice.run(stop))
    publishing = asyncio.create_task(publisher.run())
    talking = asyncio.create_task(talk())
    try:
        await alice.wait_offset(50)
        # Drop the connection, let many messages go by, come back several times mid-stream.
        for _ in range(3):
            assert alice.client is not None
            await alice.client.close()
            await publisher.wait_count(len(publisher.offsets) + 100)
            await alice.wait_offset(max(publisher.offsets) - 5)
    finally:
        publisher.stop.set()
        stop_talking.set()
        await asyncio.wait_for(publishing, 20)
        await asyncio.wait_for(talking, 10)
    last = int(orjson.loads(await _history(server, room, limit=0))["offset"])
    await alice.wait_offset(last)
    stop.set()
    assert alice.client is not None
    await alice.client.close()
    await asyncio.wait_for(reader, 10)
    await talker.close()
    assert len(alice.welcomes) == 4
    assert [w["recovered"] for w in alice.welcomes[1:]] == [True, True, True]
    assert {w["epoch"] for w in alice.welcomes} == {welcome["epoch"]}
    alice.assert_exactly_once(1, last)


async def test_replay_skips_messages_for_other_members(
    start_server: StartServer, broker: str
) -> None:
    """A replay holds the room's messages and those sent `to` the resuming member, never
    those sent to someone else."""
    server = start_server("--broker", broker)
    alice = await Client.connect(server.ws_url, "alice", "r")
    epoch = (await alice.join())["payload"]["epoch"]
    bob = await Client.connect(server.ws_url, "bob", "r")
    await bob.join()
    async with httpx.AsyncClient(base_url=server.url) as http:
        for body in (
            {"payload": 1},
            {"payload": 2, "to": "alice"},
            {"payload": 3, "to": "bob"},
            {"payload": 4},
        ):
            response = await http.post("/api/v1/rooms/r/messages", json={"topic": "t", **body})
            assert response.status_code == 202, response.text
    assert await read_offsets(alice, 4) == [1, 2, 4]
    await alice.close()
    assert (await bob.recv_topic("presence.leave"))["payload"] == {"username": "alice"}
    again = await Client.connect(server.ws_url, "alice", "r", since=0, epoch=epoch)
    assert (await again.join())["payload"]["recovered"] is True
    replay = [await again.recv() for _ in range(3)]
    assert [(f["offset"], f["payload"]) for f in replay] == [(1, 1), (2, 2), (4, 4)]
    await again.barrier()
    await again.close()
    await bob.close()


async def test_resume_at_the_retention_edge(start_server: StartServer, broker: str) -> None:
    """With --history-size 5 and offsets 1..10, since=5 replays 6..10 (recovered true) but
    since=4 is too old: recovered false, no replay, then live messages only."""
    server = start_server("--broker", broker, "--history-size", "5")
    async with httpx.AsyncClient(base_url=server.url) as http:
        for n in range(10):
            await publish(http, "r", n)
        # The epoch from the HTTP API: a member joining and leaving here would race its
        # presence.leave with the next client's join.
        epoch = (await http.get("/api/v1/rooms/r/history")).json()["epoch"]

        edge = await Client.connect(server.ws_url, "alice", "r", since=5, epoch=epoch)
        welcome = (await edge.join())["payload"]
        assert (welcome["recovered"], welcome["offset"]) == (True, 10)
        assert await read_offsets(edge, 10) == [6, 7, 8, 9, 10]
        await edge.barrier()
        await edge.close()

        old = await Client.connect(server.ws_url, "carol", "r", since=4, epoch=epoch)
        welcome = (await old.join())["payload"]
        assert (welcome["recovered"], welcome["offset"], welcome["epoch"]) == (False, 10, epoch)
        # No replay: only alice's leave may come before live messages (it can be fanned out
        # after carol joined), and a leave carries no offset.
        await publish(http, "r", "live")
        assert await read_offsets(old, 11) == [11]
        await old.close()


async def test_replay_larger_than_the_outbound_buffer(
    start_server: StartServer, broker: str
) -> None:
    """A replay of retained messages larger than --outbound-buffer is delivered in full, with
    live messages published before the client reads any of it: the replay is bounded by the
    history, not a slow consumer."""
    server = start_server("--broker", broker, "--outbound-buffer", "65536", "--history-size", "400")
    async with httpx.AsyncClient(base_url=server.url) as http:
        # 6 MiB of history: more than the kernel's socket buffers take (~4 MiB on loopback).
        blob = "b" * 16384
        for n in range(400):
            await publish(http, "r", {"n": n, "blob": blob})
        watcher = await Client.connect(server.ws_url, "watcher", "r")
        epoch = (await watcher.join())["payload"]["epoch"]
        # A small receive buffer and no reading until the live messages are out: the replay
        # cannot hide in the kernel's buffers.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        sock.connect(("127.0.0.1", server.port))
        query = urlencode({"username": "alice", "roomID": "r", "since": 0, "epoch": epoch})
        client = Client(
            await websockets.connect(f"{server.ws_url}?{query}", sock=sock, max_size=None)
        )
        assert (await watcher.recv_topic("presence.join"))["payload"]["username"] == "alice"
        for n in range(3):
            await publish(http, "r", {"live": n})
        assert (await client.join())["payload"]["recovered"] is True
        assert await read_offsets(client, 403) == list(range(1, 404))
        await client.barrier()
        await client.close()
    await watcher.close()
    assert server.log is not None
    assert "connection.slow_consumer" not in server.log.text()


async def test_resume_after_history_ttl_is_not_recovered(
    start_server: StartServer, broker: str
) -> None:
    """Once --history-ttl has passed, the retained messages are gone and resuming from before
    them says recovered false."""
    server = start_server("--broker", broker, "--history-ttl", "1")
    async with httpx.AsyncClient(base_url=server.url) as http:
        for n in range(3):
            await publish(http, "r", n)
        # The epoch from the HTTP API: a member joining and leaving here would race its
        # presence.leave with the next client's join.
        epoch = (await http.get("/api/v1/rooms/r/history")).json()["epoch"]
    # Poll the history until retention has dropped the messages (no event to wait on).
    with server.http() as sync_http:
        await poll_until(
            lambda: not sync_http.get("/api/v1/rooms/r/history").json()["messages"],
            timeout=10,
            every=0.2,
        )
    client = await Client.connect(server.ws_url, "alice", "r", since=1, epoch=epoch)
    welcome = (await client.join())["payload"]
    assert welcome["recovered"] is False
    await client.barrier()
    await client.close()


async def test_history_of_an_empty_room_is_lost_after_history_ttl(
    start_server: StartServer, broker: str
) -> None:
    """With --history-ttl 1, once everyone left and the messages expired the room has a new
    epoch (GET .../history and the welcome agree); resuming with the old one says recovered
    false, and the next message is offset 1."""
    server = start_server("--broker", broker, "--history-ttl", "1")
    bob = await Client.connect(server.ws_url, "bob", "r")
    old = (await bob.join())["payload"]["epoch"]
    await bob.send({"topic": "chat", "payload": 1, "id": 1})
    assert (await bob.recv_topic("ack"))["payload"] == {"id": 1, "offset": 1}
    await bob.close()
    with server.http() as sync_http:
        await poll_until(
            lambda: sync_http.get("/api/v1/rooms/r/history").json()["epoch"] != old,
            timeout=8,
            every=0.2,
        )
    page = orjson.loads(await _history(server, "r"))
    assert (page["offset"], page["messages"]) == (0, [])
    client = await Client.connect(server.ws_url, "alice", "r", since=1, epoch=old)
    welcome = (await client.join())["payload"]
    assert (welcome["recovered"], welcome["offset"], welcome["epoch"]) == (
        False,
        0,
        page["epoch"],
    )
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert await publish(http, "r", "again") == 1
    assert await read_offsets(client, 1) == [1]
    await client.close()


async def test_quiet_room_with_a_member_keeps_its_epoch(
    start_server: StartServer, broker: str
) -> None:
    """With --history-ttl 1, a room whose member stays connected keeps its epoch and offset
    after its messages expired: the member is not closed and gets the next offset."""
    server = start_server("--broker", broker, "--history-ttl", "1")
    alice = await Client.connect(server.ws_url, "alice", "r")
    epoch = (await alice.join())["payload"]["epoch"]
    async with httpx.AsyncClient(base_url=server.url) as http:
        await publish(http, "r", 1)
        assert await read_offsets(alice, 1) == [1]
        with server.http() as sync_http:
            await poll_until(
                lambda: not sync_http.get("/api/v1/rooms/r/history").json()["messages"],
                timeout=8,
                every=0.2,
            )
        page = orjson.loads(await _history(server, "r"))
        assert (page["epoch"], page["offset"]) == (epoch, 1)
        await publish(http, "r", 2)
        assert await read_offsets(alice, 2) == [2]
    await alice.barrier()
    await alice.close()


async def test_resume_with_another_epoch_is_not_recovered(
    start_server: StartServer, broker: str
) -> None:
    """since with an epoch the room never had: recovered false and no replay."""
    server = start_server("--broker", broker)
    async with httpx.AsyncClient(base_url=server.url) as http:
        await publish(http, "r", 1)
    client = await Client.connect(server.ws_url, "alice", "r", since=0, epoch="not-this-one")
    welcome = (await client.join())["payload"]
    assert (welcome["recovered"], welcome["offset"]) == (False, 1)
    assert welcome["epoch"] != "not-this-one"
    await client.barrier()
    await client.close()


async def test_resume_from_beyond_the_latest_offset_is_not_recovered(
    start_server: StartServer, broker: str
) -> None:
    """since greater than the room's latest offset (a client from another history) is not
    recoverable: recovered false, and later messages are still delivered."""
    server = start_server("--broker", broker)
    async with httpx.AsyncClient(base_url=server.url) as http:
        await publish(http, "r", 1)
        # The epoch from the HTTP API: a member joining and leaving here would race its
        # presence.leave with the next client's join.
        epoch = (await http.get("/api/v1/rooms/r/history")).json()["epoch"]
        client = await Client.connect(server.ws_url, "alice", "r", since=99, epoch=epoch)
        welcome = (await client.join())["payload"]
        assert welcome["recovered"] is False
        await client.barrier()
        await publish(http, "r", 2)
        assert await read_offsets(client, 2) == [2]
        await client.close()


async def test_memory_epoch_changes_when_the_process_restarts(
    start_server: StartServer,
) -> None:
    """A restarted memory:// server starts a new epoch: resuming from the old one says
    recovered false."""
    server = start_server()
    async with httpx.AsyncClient(base_url=server.url) as http:
        await publish(http, "r", 1)
    client = await Client.connect(server.ws_url, "alice", "r")
    old = (await client.join())["payload"]
    await client.close()
    server.stop()
    server = start_server()
    async with httpx.AsyncClient(base_url=server.url) as http:
        await publish(http, "r", 1)
    client = await Client.connect(server.ws_url, "alice", "r", since=1, epoch=old["epoch"])
    welcome = (await client.join())["payload"]
    assert welcome["recovered"] is False
    assert welcome["epoch"] != old["epoch"]
    await client.close()


async def test_redis_epoch_changes_when_the_stream_is_lost(
    start_server: StartServer, redis_server: RedisProcess
) -> None:
    """After FLUSHALL the room's history is gone: a new epoch, and resuming from the old one
    says recovered false."""
    import redis.asyncio as aioredis

    server = start_server("--broker", redis_server.url)
    async with httpx.AsyncClient(base_url=server.url) as http:
        for n in range(3):
            await publish(http, "r", n)
        client = await Client.connect(server.ws_url, "alice", "r")
        old = (await client.join())["payload"]
        await client.close()
        store = aioredis.Redis.from_url(redis_server.url)
        try:
            await store.flushall()
        finally:
            await store.aclose()
        page = orjson.loads(await _history(server, "r"))
        assert page["epoch"] != old["epoch"]
        assert page["messages"] == []
        client = await Client.connect(server.ws_url, "alice2", "r", since=3, epoch=old["epoch"])
        welcome = (await client.join())["payload"]
        assert welcome["recovered"] is False
        assert welcome["epoch"] == page["epoch"]
        await client.close()


async def test_history_api_serves_what_members_received(
    start_server: StartServer, broker: str
) -> None:
    """GET .../history returns the same frames members received, after `since`, at most
    `limit`, with the epoch of the welcome."""
    server = start_server("--broker", broker)
    member = await Client.connect(server.ws_url, "alice", "r")
    epoch = (await member.join())["payload"]["epoch"]
    received = []
    async with httpx.AsyncClient(base_url=server.url) as http:
        for n in range(6):
            await publish(http, "r", {"n": n})
            received.append(await member.recv())
    await member.close()
    page = orjson.loads(await _history(server, "r"))
    assert (page["epoch"], page["offset"], page["messages"]) == (epoch, 6, received)
    page = orjson.loads(await _history(server, "r", since=2, limit=3))
    assert page["messages"] == received[2:5]
    page = orjson.loads(await _history(server, "r", since=6))
    assert page["messages"] == []


async def _history(server: ServerProcess, room: str, **params: int) -> bytes:
    async with httpx.AsyncClient(base_url=server.url) as http:
        response = await http.get(f"/api/v1/rooms/{room}/history", params=params)
    assert response.status_code == 200, response.text
    return response.content


async def test_resuming_connection_takes_over_its_username(
    start_server: StartServer, broker: str
) -> None:
    """Under the default --on-duplicate reject, a second plain connection is refused with 4409,
    but one that resumes with since+epoch takes the username over: the old connection is
    closed with 4409, the new one gets the missed messages and nobody sees a leave."""
    server = start_server("--broker", broker)
    old = await Client.connect(server.ws_url, "alice", "takeover")
    welcome = (await old.join())["payload"]
    bob = await Client.connect(server.ws_url, "bob", "takeover")
    await bob.join()
    await old.recv_topic("presence.join")
    plain = await Client.connect(server.ws_url, "alice", "takeover")
    code, frames = await plain.closed()
    assert code == 4409
    assert [f["payload"]["code"] for f in frames] == ["duplicate"]
    await bob.send({"topic": "chat", "payload": "missed", "id": 1})
    assert (await bob.recv_topic("ack"))["payload"] == {"id": 1, "offset": 1}
    resumed = await Client.connect(
        server.ws_url, "alice", "takeover", since=welcome["offset"], epoch=welcome["epoch"]
    )
    again = (await resumed.join())["payload"]
    assert again["recovered"] is True
    assert (await resumed.recv())["payload"] == "missed"
    code, frames = await old.closed()
    assert code == 4409
    assert frames[-1]["topic"] == "error"
    assert frames[-1]["payload"]["code"] == "duplicate"
    await bob.barrier()
    await resumed.close()
    await bob.close()


async def test_redis_history_keeps_exactly_its_size_between_trims(
    start_server: StartServer, redis_server: RedisProcess
) -> None:
    """On redis:// the stream is trimmed every tenth of the history size (here every 2nd
    message of 20), so it may hold one message more; history, recovery and the welcome see
    exactly the last 20, as on memory://."""
    import redis.asyncio as aioredis

    from roomcast.brokers.redis import wire

    server = start_server("--broker", redis_server.url, "--history-size", "20")
    async with httpx.AsyncClient(base_url=server.url) as http:
        for n in range(1, 26):
            await publish(http, "r", n)
    store = aioredis.Redis.from_url(redis_server.url)
    try:
        assert await store.xlen(wire.room_keys("r")[2]) == 21  # trimmed at 24, not yet at 25
    finally:
        await store.aclose()
    page = orjson.loads(await _history(server, "r"))
    assert [m["offset"] for m in page["messages"]] == list(range(6, 26))
    page = orjson.loads(await _history(server, "r", since=2, limit=3))
    assert [m["offset"] for m in page["messages"]] == [6, 7, 8]
    epoch = page["epoch"]
    lost = await Client.connect(server.ws_url, "alice", "r", since=4, epoch=epoch)
    assert (await lost.join())["payload"]["recovered"] is False  # offset 5 is past the size
    await lost.close()
    kept = await Client.connect(server.ws_url, "bob", "r", since=5, epoch=epoch)
    welcome = (await kept.join())["payload"]
    assert welcome["recovered"] is True
    assert [(await kept.recv())["offset"] for _ in range(20)] == list(range(6, 26))
    await kept.close()
