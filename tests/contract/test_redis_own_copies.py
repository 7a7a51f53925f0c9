"""Publishes that Redis leaves to their node: when the publishing node's subscription is all
that receives a room (one Redis), the PUBLISH script announces nothing and the node delivers
the message from the script's answer; any other subscriber, and the room's one order, are
kept (brokers/redis/publishing.py)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from roomcast.brokers.redis import RedisBroker, wire
from roomcast.brokers.redis import calls as calls_module
from roomcast.errors import BrokerTimeout
from roomcast.node import Node
from roomcast.protocol import message_prefix
from roomcast.settings import Settings
from tests.contract.conftest import Recorder
from tests.contract.test_node_ordering import member_in, until
from tests.harness import RedisProcess


async def publishes_seen(redis: Redis) -> int:
    """How many PUBLISH commands Redis ran since its stats were reset (scripts' included)."""
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_publish", {}).get("calls", 0))


@pytest.fixture
async def nodes(redis_server: RedisProcess) -> AsyncIterator[tuple[Node, Node, Redis]]:
    """Two started nodes on one Redis, and a client of it."""
    started = []
    for node_id in ("n1", "n2"):
        node = Node(Settings(node_id=node_id), broker=RedisBroker(redis_server.url))
        await node.start()
        started.append(node)
    redis = Redis.from_url(redis_server.url)
    yield started[0], started[1], redis
    await redis.aclose()
    for node in started:
        await node.shutdown()


async def publish(node: Node, room: str, n: object) -> None:
    await node.broker.publish(room, message_prefix("t", n, room, "x"))


async def test_a_room_only_this_node_receives_is_delivered_without_a_publish(
    nodes: tuple[Node, Node, Redis],
) -> None:
    n1, _, redis = nodes
    connection = await member_in(n1, "r1")
    await redis.config_resetstat()
    for n in range(20):
        await publish(n1, "r1", n)
    # Each publish returned after its copy reached the member: no wait for the subscription.
    assert connection.offsets() == list(range(1, 21))
    # Only the first, before this node had delivered anything of the room.
    assert await publishes_seen(redis) == 1
    assert [p.offset for p in (await n1.broker.history("r1")).publications] == list(range(1, 21))


async def test_a_room_another_node_receives_too_is_announced_to_both(
    nodes: tuple[Node, Node, Redis],
) -> None:
    n1, n2, redis = nodes
    first, second = await member_in(n1, "r1"), await member_in(n2, "r1")
    await redis.config_resetstat()
    for n in range(10):
        await publish(n1, "r1", n)
    await until(lambda: len(second.frames) >= 10)
    assert first.offsets() == second.offsets() == list(range(1, 11))
    assert await publishes_seen(redis) == 10


async def test_a_room_this_node_no_longer_receives_is_announced(
    nodes: tuple[Node, Node, Redis],
) -> None:
    """Once n1 unsubscribed the room, its publishes are announced: n2, now the one subscriber,
    gets them (had n1 still named its channel, the script would have counted n2 as n1)."""
    n1, n2, redis = nodes
    await member_in(n1, "r1")
    await publish(n1, "r1", 0)
    await n1.broker.unsubscribe("r1")
    second = await member_in(n2, "r1")
    await redis.config_resetstat()
    await publish(n1, "r1", 1)
    await until(lambda: len(second.frames) >= 1)
    assert second.offsets() == [2]
    assert await publishes_seen(redis) == 1


async def test_one_order_when_another_node_publishes_into_a_room_only_this_one_receives(
    nodes: tuple[Node, Node, Redis],
) -> None:
    """n2 does not receive r1 (its publishes are announced); n1 does, alone (its own are left
    to it): the member gets each offset once, in order, whichever answer came first."""
    n1, n2, _ = nodes
    connection = await member_in(n1, "r1")

    async def publisher(node: Node, base: int) -> None:
        for n in range(100):
            await asyncio.gather(*(publish(node, "r1", base + n * 4 + i) for i in range(4)))

    await asyncio.gather(publisher(n1, 0), publisher(n2, 1000))
    await until(lambda: len(connection.frames) >= 800)
    assert connection.offsets() == list(range(1, 801))


async def test_what_the_script_announces_is_what_the_node_would_announce(
    redis_server: RedisProcess,
) -> None:
    """`wire.encode_publication` (a late announcement) writes the bytes the script writes."""
    broker = RedisBroker(redis_server.url)
    await broker.start("n1", Recorder())
    redis = Redis.from_url(redis_server.url)
    pubsub = redis.pubsub()
    channel = wire.channel(wire.channel_prefix(0), "r1")
    await pubsub.subscribe(channel)
    try:
        async with asyncio.timeout(5):
            while (await pubsub.get_message(timeout=1)) is None:
                pass  # the subscribe confirmation
            publication = await broker.publish("r1", message_prefix("t", "é", "r1", "x"), "bob")
            message = None
            while message is None:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
        assert message["data"] == wire.encode_publication(publication)
        assert wire.decode("r1", message["data"]) == publication
    finally:
        await pubsub.aclose()
        await redis.aclose()
        await broker.close()


async def test_a_publish_after_one_this_node_has_not_received_is_announced(
    nodes: tuple[Node, Node, Redis],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """n2's message (offset 2) is still on its way to n1 when n1 publishes (offset 3): n1 has
    delivered the room only up to 1, so its publish is announced and comes after 2 by the
    subscription, rather than from the answer ahead of it."""
    n1, n2, redis = nodes
    connection = await member_in(n1, "r1")
    await publish(n1, "r1", "first")
    subscriber = n1.broker._subscriber  # type: ignore[attr-defined]
    held: list[tuple[bytes, bytes]] = []
    dispatch = subscriber._dispatch
    monkeypatch.setattr(subscriber, "_dispatch", lambda channel, data: held.append((channel, data)))
    await publish(n2, "r1", "theirs")
    await until(lambda: held)
    await redis.config_resetstat()
    mine = asyncio.ensure_future(publish(n1, "r1", "mine"))
    await until(lambda: len(held) == 2)
    assert not mine.done()  # it waits for its own copy
    assert await publishes_seen(redis) == 1
    for channel, data in held:
        dispatch(channel, data)
    await mine
    assert connection.offsets() == [1, 2, 3]
    assert [orjson.loads(f)["payload"] for f in connection.frames] == ["first", "theirs", "mine"]


async def test_a_redis_user_denied_pubsub_gets_every_publish_announced(
    redis_server: RedisProcess,
) -> None:
    """An ACL that denies `PUBSUB` (which the script needs to count subscribers) leaves every
    publish announced: they still arrive, in order, and the node says why once."""
    admin = Redis.from_url(redis_server.url)
    # The ACL of docs/configuration.md ("The Redis user"), without PUBSUB.
    acl = ("on", ">secret", "~rc:*", "&rc:*", "+@all", "-pubsub")
    await admin.execute_command("ACL", "SETUSER", "limited", *acl)
    url = f"redis://limited:secret@127.0.0.1:{redis_server.port}/0"
    node = Node(Settings(node_id="n1"), broker=RedisBroker(url))
    await node.start()
    try:
        connection = await member_in(node, "r1")
        await admin.config_resetstat()
        for n in range(5):
            await publish(node, "r1", n)
        assert connection.offsets() == [1, 2, 3, 4, 5]
        assert await publishes_seen(admin) == 5
    finally:
        await node.shutdown()
        await admin.aclose()


async def test_a_publish_returns_after_its_copy_while_another_node_publishes_too(
    nodes: tuple[Node, Node, Redis],
) -> None:
    """n2, which does not receive r1, publishes into it all along (announced) while n1, its
    one receiver, publishes: each of n1's publishes returns once the member has its copy,
    and no gap is ever seen (no repair)."""
    n1, n2, _ = nodes
    connection = await member_in(n1, "r1")
    repairs: list[str] = []
    real_repair = n1.delivery._repair

    async def repair(room: str, position: Any) -> None:
        repairs.append(room)
        await real_repair(room, position)

    n1.delivery._repair = repair  # type: ignore[method-assign]
    stop = asyncio.Event()

    async def outsider() -> None:
        n = 0
        while not stop.is_set():
            await asyncio.gather(*(publish(n2, "r1", f"theirs{n + k}") for k in range(4)))
            n += 4

    task = asyncio.ensure_future(outsider())
    early = []
    for n in range(300):
        publication = await n1.broker.publish("r1", message_prefix("t", n, "r1", "x"))
        if publication.offset not in connection.offsets():
            early.append(publication.offset)
    stop.set()
    await task
    await until(lambda: len(connection.frames) == connection.offsets()[-1])
    assert early == []
    assert repairs == []
    assert connection.offsets() == list(range(1, len(connection.frames) + 1))


async def test_a_room_without_history_keeps_its_order_and_members(
    redis_server: RedisProcess,
) -> None:
    """With no history to repair from, two nodes publishing into a room only n1 receives:
    the member still gets every message once, in order, and is not closed."""
    started = []
    for node_id in ("n1", "n2"):
        node = Node(
            Settings(node_id=node_id, history_size=0),
            broker=RedisBroker(redis_server.url, history_size=0),
        )
        await node.start()
        started.append(node)
    n1, n2 = started
    try:
        connection = await member_in(n1, "r1")
        closed: list[int] = []
        connection.close = lambda code, reason="": closed.append(code)  # type: ignore[method-assign]

        async def publisher(node: Node) -> None:
            for n in range(50):
                await asyncio.gather(*(publish(node, "r1", n * 4 + i) for i in range(4)))

        await asyncio.gather(publisher(n1), publisher(n2))
        await until(lambda: len(connection.frames) >= 400)
        assert connection.offsets() == list(range(1, 401))
        assert closed == []
    finally:
        for node in started:
            await node.shutdown()


async def test_a_publish_whose_answer_was_lost_still_reaches_the_member(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis stalls past the reply timeout, and past that of a history read right after:
    the publish gets BrokerTimeout and its script runs once Redis wakes (left to the node,
    whose answer is gone). The node starts a new subscription and repairs the room once it
    is up: the member gets it."""
    monkeypatch.setattr(calls_module, "REPLY_TIMEOUT", 1.0)
    redis_process = RedisProcess(args=["--enable-debug-command", "yes"]).start()
    node = Node(
        Settings(node_id="n1", presence_ttl=60),
        broker=RedisBroker(redis_process.url, presence_ttl=60),
    )
    await node.start()
    admin = Redis.from_url(redis_process.url, socket_timeout=30)
    try:
        connection = await member_in(node, "r1")
        await publish(node, "r1", "before")
        sleeping = asyncio.ensure_future(admin.execute_command("DEBUG", "SLEEP", "3"))
        await until(lambda: redis_busy(redis_process))
        with pytest.raises(BrokerTimeout):
            await publish(node, "r1", "during")
        await sleeping
        await until(lambda: len(connection.frames) >= 2, timeout=10)
        assert connection.offsets() == [1, 2]
    finally:
        await admin.aclose()
        await node.shutdown()
        redis_process.stop()


def redis_busy(redis_process: RedisProcess) -> bool:
    """Whether the redis-server is inside `DEBUG SLEEP` (it answers nothing then)."""
    with socket.create_connection(("127.0.0.1", redis_process.port), timeout=1) as conn:
        conn.settimeout(0.1)
        conn.sendall(b"PING\r\n")
        try:
            return not conn.recv(16)
        except TimeoutError:
            return True


async def test_a_redis_user_denied_pubsub_numsub_only_gets_every_publish_announced(
    redis_server: RedisProcess,
) -> None:
    admin = Redis.from_url(redis_server.url)
    acl = ("on", ">secret", "~rc:*", "&rc:*", "+@all", "-pubsub|numsub")
    await admin.execute_command("ACL", "SETUSER", "limited", *acl)
    url = f"redis://limited:secret@127.0.0.1:{redis_server.port}/0"
    node = Node(Settings(node_id="n1"), broker=RedisBroker(url))
    await node.start()
    try:
        connection = await member_in(node, "r1")
        for n in range(3):
            await publish(node, "r1", n)
        assert connection.offsets() == [1, 2, 3]
    finally:
        await node.shutdown()
        await admin.aclose()


async def test_messages_before_the_room_cursor_is_set_keep_their_order(
    nodes: tuple[Node, Node, Redis],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While n1's cursor of r1 is not yet set (its history read is under way), n2's message
    is held on its way and n1 publishes: n1's is announced (it has delivered nothing of the
    room yet), so both arrive by the subscription, in order."""
    n1, n2, _ = nodes
    gate = asyncio.Event()
    track = n1.delivery.track

    async def slow_track(room: str) -> None:
        await gate.wait()
        await track(room)

    monkeypatch.setattr(n1.delivery, "track", slow_track)
    joining = asyncio.ensure_future(member_in(n1, "r1"))
    subscriber = n1.broker._subscriber  # type: ignore[attr-defined]
    await until(lambda: subscriber.own("r1"))
    held: list[tuple[bytes, bytes]] = []
    dispatch = subscriber._dispatch
    monkeypatch.setattr(subscriber, "_dispatch", lambda channel, data: held.append((channel, data)))
    await publish(n2, "r1", "theirs")
    await until(lambda: held)
    mine = asyncio.ensure_future(publish(n1, "r1", "mine"))
    await until(lambda: len(held) == 2)
    for channel, data in held:
        dispatch(channel, data)
    gate.set()
    connection = await joining
    await mine
    assert connection.offsets() == [1, 2]
