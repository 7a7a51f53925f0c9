"""Publishes that Redis leaves to their node: when the publishing node's subscription is all
that receives a room (one Redis), the PUBLISH script announces nothing and the node delivers
the message from the script's answer; any other subscriber, and the room's one order, are
kept (brokers/redis/publishing.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
from redis.asyncio import Redis

from roomcast.brokers.redis import RedisBroker, wire
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
    assert await publishes_seen(redis) == 0
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


async def test_an_own_publish_that_overtakes_an_announced_one_waits_for_it(
    nodes: tuple[Node, Node, Redis],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """n2's message (offset 1) is still on its way to n1 by the subscription when n1's own
    (offset 2) comes back in its answer: the member gets 1 (read from history), then 2, and
    the late copy of 1 is dropped."""
    n1, n2, _ = nodes
    connection = await member_in(n1, "r1")
    subscriber = n1.broker._subscriber  # type: ignore[attr-defined]
    held: list[tuple[bytes, bytes]] = []
    dispatch = subscriber._dispatch
    monkeypatch.setattr(subscriber, "_dispatch", lambda channel, data: held.append((channel, data)))
    await publish(n2, "r1", "theirs")
    await until(lambda: held)
    await publish(n1, "r1", "mine")
    await until(lambda: len(connection.frames) >= 2)
    for channel, data in held:
        dispatch(channel, data)
    assert connection.offsets() == [1, 2]
    assert [orjson.loads(f)["payload"] for f in connection.frames] == ["theirs", "mine"]


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
