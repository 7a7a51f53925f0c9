"""Cluster faults and the publisher: lost subscriptions, lost history, commands from afar."""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import Callable

import httpx
import pytest
from redis.asyncio import Redis

from roomcast import KickMember, MemberNotFound, Publisher, SendToMember
from tests.harness import Client, RedisProcess, ServerProcess

Start = Callable[..., ServerProcess]


def node(start_server: Start, redis: RedisProcess, node_id: str, *flags: str) -> ServerProcess:
    return start_server("--broker", redis.url, "--node-id", node_id, *flags)


async def test_publisher_sends_commands_to_members_anywhere(
    start_server: Start, redis_server: RedisProcess
) -> None:
    """A Publisher with no connections publishes, messages one member and kicks across nodes."""
    a = node(start_server, redis_server, "a")
    b = node(start_server, redis_server, "b")
    alice = await Client.connect(a.ws_url, "alice", "r1")
    await alice.join()
    bob = await Client.connect(b.ws_url, "bob", "r1")
    await bob.join()
    await alice.recv_topic("presence.join")
    async with Publisher(redis_server.url) as publisher:
        assert await publisher.publish("r1", "news", {"n": 1}) == 1
        expected = {
            "topic": "news",
            "payload": {"n": 1},
            "room": "r1",
            "from": "$server",
            "offset": 1,
        }
        assert await alice.recv() == expected
        assert await bob.recv() == expected
        assert await publisher.send(SendToMember("r1", "bob", "note", 2)) == 2
        assert (await bob.recv())["payload"] == 2
        with pytest.raises(MemberNotFound):
            await publisher.send_to("r1", "zed", "note", 3)
        await publisher.send(KickMember("r1", "alice"))
        code, _ = await alice.closed()
        assert code == 4499
    assert await bob.recv() == {
        "topic": "presence.leave",
        "payload": {"username": "alice"},
        "room": "r1",
    }
    await bob.barrier()
    await bob.close()


async def test_lost_subscription_is_noticed_and_repaired(
    start_server: Start, redis_server: RedisProcess
) -> None:
    """Killed subscription connections: the node reconnects and fills the gap from history."""
    a = node(start_server, redis_server, "a")
    alice = await Client.connect(a.ws_url, "alice", "r1")
    await alice.join()
    admin = Redis.from_url(redis_server.url)
    async with Publisher(redis_server.url) as publisher:
        assert await publisher.publish("r1", "n", 0) == 1
        assert (await alice.recv())["offset"] == 1
        await admin.client_kill_filter(_type="pubsub")
        for n in range(1, 40):
            await publisher.publish("r1", "n", n)
    offsets = [(await alice.recv_topic("n", 15))["offset"] for _ in range(39)]
    assert offsets == list(range(2, 41))
    assert a.log is not None
    a.log.wait_for(r"broker\.lost")
    a.log.wait_for(r"broker\.connected.*rooms=1")
    await alice.barrier()
    await alice.close()
    await admin.aclose()


async def test_lost_history_makes_members_reconnect(
    start_server: Start, redis_server: RedisProcess
) -> None:
    """After Redis lost its data (a new epoch), members are closed 4503 and resume afresh."""
    a = node(start_server, redis_server, "a", "--presence-ttl", "3")
    alice = await Client.connect(a.ws_url, "alice", "r1")
    welcome = await alice.join()
    admin = Redis.from_url(redis_server.url)
    async with Publisher(redis_server.url) as publisher:
        await publisher.publish("r1", "n", 1)
        assert (await alice.recv())["offset"] == 1
        await admin.flushall()
        await publisher.publish("r1", "n", 2)
        code, frames = await alice.closed()
        assert code == 4503
        assert frames[-1]["payload"]["code"] == "unavailable"
    async with asyncio.timeout(10):  # the node puts its presence back within one lease
        while True:
            again = await Client.connect(
                a.ws_url, "alice", "r1", since=1, epoch=welcome["payload"]["epoch"]
            )
            first = await again.recv()
            if first["topic"] == "welcome":
                break
            await again.closed()
    assert first["payload"]["recovered"] is False
    assert first["payload"]["epoch"] != welcome["payload"]["epoch"]
    await again.close()
    await admin.aclose()


async def test_node_started_before_redis_becomes_ready(start_server: Start) -> None:
    """A node whose Redis is not up yet starts not-ready and serves once Redis is there; it
    logs `roomcast.ready` then, and only then."""
    redis = RedisProcess()
    a = start_server("--broker", redis.url, "--node-id", "a")
    assert a.log is not None
    assert "roomcast.listening" in a.log.text()
    assert "roomcast.ready url=" not in a.log.text()
    async with httpx.AsyncClient(base_url=a.url) as http:
        assert (await http.get("/readyz")).status_code == 503
        refused = await Client.connect(a.ws_url, "alice", "r1")
        code, frames = await refused.closed()
        assert code == 4503
        assert frames[0]["payload"]["code"] == "unavailable"
        redis.start()
        try:
            async with asyncio.timeout(15):  # the node retries with backoff: poll
                while (await http.get("/readyz")).status_code != 200:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
            assert a.log is not None
            a.log.wait_for(r"roomcast\.ready url=", timeout=15)  # ready now, not before
            alice = await Client.connect(a.ws_url, "alice", "r1")
            assert (await alice.join())["payload"]["members"] == ["alice"]
            await alice.close()
        finally:
            redis.stop()


async def test_replace_policy_across_nodes(start_server: Start, redis_server: RedisProcess) -> None:
    """With --on-duplicate replace, a newer connection on node B closes the one on node A."""
    policy = ("--on-duplicate", "replace")
    a = node(start_server, redis_server, "a", *policy)
    b = node(start_server, redis_server, "b", *policy)
    bob = await Client.connect(a.ws_url, "bob", "r1")
    await bob.join()
    old = await Client.connect(a.ws_url, "alice", "r1")
    await old.join()
    await bob.recv_topic("presence.join")
    new = await Client.connect(b.ws_url, "alice", "r1")
    assert (await new.join())["payload"]["members"] == ["alice", "bob"]
    code, _ = await old.closed()
    assert code == 4409
    await new.send({"topic": "chat", "payload": "still here"})
    assert (await bob.recv())["payload"] == "still here"  # no presence.leave came first
    await new.close()
    await bob.close()


async def test_silent_redis_is_noticed(start_server: Start, redis_server: RedisProcess) -> None:
    """A Redis that stops answering without closing (frozen, cut off) is noticed by heartbeat."""
    a = node(start_server, redis_server, "a", "--presence-ttl", "3")
    alice = await Client.connect(a.ws_url, "alice", "r1")
    await alice.join()
    assert redis_server.proc is not None
    redis_server.proc.send_signal(signal.SIGSTOP)  # sockets stay open: no error, only silence
    assert a.log is not None
    try:
        async with httpx.AsyncClient(base_url=a.url) as http, asyncio.timeout(15):
            while (await http.get("/readyz")).status_code != 503:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        a.log.wait_for(r"broker\.silent", timeout=10)
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    a.log.wait_for(r"broker\.connected.*rooms=1", timeout=15)
    async with Publisher(redis_server.url) as publisher:
        offset = await publisher.publish("r1", "n", "after")
    assert (await alice.recv_topic("n"))["offset"] == offset
    await alice.close()


async def wait_ready(server: ServerProcess, status: int) -> None:
    """Poll /readyz until it answers `status` (there is no event to wait on)."""
    async with httpx.AsyncClient(base_url=server.url) as http, asyncio.timeout(20):
        while (await http.get("/readyz")).status_code != status:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_publish_to_a_frozen_redis_is_answered_timeout(
    start_server: Start, redis_server: RedisProcess
) -> None:
    """A publish that reached Redis before it froze (SIGSTOP) is answered `timeout` (HTTP
    504), not `unavailable`: once Redis resumes, the message turns out published. A frame sent
    once the node knows Redis is unreachable is `unavailable`: it was not handled."""
    # The POST must reach the node before its heartbeat takes the frozen Redis for gone
    # (two unanswered pings, 2 s apart with this presence ttl): a busy machine may hold the
    # request for a second or more.
    a = node(start_server, redis_server, "a", "--presence-ttl", "12")
    alice = await Client.connect(a.ws_url, "alice", "r1")
    await alice.join()
    await alice.send({"topic": "chat", "payload": "first", "id": 0})  # Redis has the script
    await alice.recv_topic("ack")
    proc = redis_server.proc
    assert proc is not None
    async with httpx.AsyncClient(base_url=a.url, timeout=20) as http:
        proc.send_signal(signal.SIGSTOP)
        try:
            answer = await http.post(
                "/api/v1/rooms/r1/messages", json={"topic": "t", "payload": "by http"}
            )
            assert answer.status_code == 504
            assert answer.json()["error"]["code"] == "timeout"
            # /readyz turns 503 on its own ping; the node refuses frames once its heartbeat
            # has taken Redis for gone.
            await wait_ready(a, 503)
            assert a.log is not None
            await asyncio.to_thread(a.log.wait_for, "broker.lost", 20)
            await alice.send({"topic": "chat", "payload": "refused", "id": 1})
            refused = await alice.recv_topic("error")
            assert (refused["payload"]["code"], refused["payload"]["id"]) == ("unavailable", 1)
        finally:
            proc.send_signal(signal.SIGCONT)
        assert (await alice.recv_topic("t", timeout=20))["payload"] == "by http"
        await wait_ready(a, 200)
        proc.send_signal(signal.SIGSTOP)
        try:
            await alice.send({"topic": "chat", "payload": "in flight", "id": 2})
            unknown = await alice.recv_topic("error", timeout=20)
            assert (unknown["payload"]["code"], unknown["payload"]["id"]) == ("timeout", 2)
        finally:
            proc.send_signal(signal.SIGCONT)
        published = await alice.recv_topic("chat", timeout=20)
        assert published["payload"] == "in flight"
        assert published["offset"] == 3
    await alice.close()


async def test_unreachable_redis_at_start_is_said_and_retried_quietly(
    start_server: Start,
) -> None:
    """With Redis unreachable the server listens after one attempt, logs why it is not ready
    (never `roomcast.ready`), and names the address it tries, password redacted, on fewer
    lines the longer it lasts (attempts 1, 2, 4, 8, ...)."""
    port = RedisProcess().port  # nothing listens there
    a = start_server("--broker", f"redis://:hunter2@127.0.0.1:{port}/0", "--node-id", "a")
    log = a.log
    assert log is not None
    log.wait_for(r"broker\.connect_failed .*attempt=8 ", timeout=30)
    async with httpx.AsyncClient(base_url=a.url) as http:
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/readyz")).status_code == 503
    lines = list(log.lines)
    assert not any("roomcast.ready url=" in line for line in lines)
    assert all("hunter2" not in line for line in lines)
    listening = next(i for i, line in enumerate(lines) if "roomcast.listening" in line)
    assert "ready=False" in lines[listening]
    failed = [line for line in lines if "broker.connect_failed" in line]
    assert [re.search(r"attempt=(\d+)", line).group(1) for line in failed] == [  # type: ignore[union-attr]
        "1",
        "2",
        "4",
        "8",
    ]
    assert all(f"address=redis://***@127.0.0.1:{port}/0 " in line for line in failed)
    # Listening came after the first attempt, not after a wait: before the fourth.
    assert listening < lines.index(failed[2])
