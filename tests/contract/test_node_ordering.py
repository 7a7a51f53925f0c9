"""A node delivers each room in offset order on both brokers, repairing gaps from history."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
from redis.asyncio import Redis

from roomcast.brokers import Broker, MemoryBroker
from roomcast.brokers.redis import RedisBroker, wire
from roomcast.brokers.redis.cluster_subscriber import ClusterSubscriber
from roomcast.node import Node
from roomcast.protocol import message_prefix
from roomcast.rooms import Member
from roomcast.settings import Settings
from tests.harness import RedisClusterProcess, RedisProcess


class Recording:
    """A Connection that keeps what it is sent."""

    def __init__(self) -> None:
        self.frames: list[str] = []

    def send(self, data: str) -> None:
        self.frames.append(data)

    send_later = send

    def close(self, code: int, reason: str = "") -> None:
        pass

    def abort(self, code: int, reason: str = "") -> None:
        pass

    @property
    def buffered(self) -> int:
        return 0

    def offsets(self) -> list[int]:
        return [orjson.loads(f)["offset"] for f in self.frames]


@pytest.fixture(params=["memory", "redis", "cluster"])
async def node(request: pytest.FixtureRequest) -> AsyncIterator[Node]:
    """A started node on one broker kind."""
    broker: Broker
    if request.param == "memory":
        broker = MemoryBroker()
    elif request.param == "cluster":
        cluster: RedisClusterProcess = request.getfixturevalue("redis_cluster")
        broker = RedisBroker(cluster.url)
    else:
        redis: RedisProcess = request.getfixturevalue("redis_server")
        broker = RedisBroker(redis.url)
    node = Node(Settings(node_id="n1"), broker=broker)
    await node.start()
    yield node
    await node.shutdown()


async def member_in(node: Node, room: str) -> Recording:
    connection = Recording()
    node.rooms.add(Member("m", room, "c1", connection))
    await node.ensure_subscribed(room)
    return connection


async def until(predicate: object, timeout: float = 5.0) -> None:
    """Poll a condition with a deadline (the repair runs as a task with no event to await)."""
    async with asyncio.timeout(timeout):
        while not predicate():  # type: ignore[operator]  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_gap_is_repaired_from_history_before_later_messages(node: Node) -> None:
    """Messages missed while unsubscribed are delivered, in order, before the one after."""
    connection = await member_in(node, "r1")
    await node.broker.unsubscribe("r1")  # the subscription is lost
    for n in range(3):
        await node.broker.publish("r1", message_prefix("t", n, "r1", "x"))
    await node.broker.subscribe("r1")
    await node.broker.publish("r1", message_prefix("t", 3, "r1", "x"))
    await until(lambda: len(connection.frames) >= 4)
    assert connection.offsets() == [1, 2, 3, 4]
    await node.broker.publish("r1", message_prefix("t", 4, "r1", "x"))
    await until(lambda: len(connection.frames) >= 5)
    assert connection.offsets() == [1, 2, 3, 4, 5]


async def test_reconnect_repairs_every_room(node: Node) -> None:
    """When the broker comes back, each room is read from history after its last offset."""
    first = await member_in(node, "r1")
    await node.broker.unsubscribe("r1")
    await node.broker.publish("r1", message_prefix("t", 0, "r1", "x"))
    await node.broker.subscribe("r1")
    node.delivery.on_broker_state(True)
    await until(lambda: len(first.frames) >= 1)
    assert first.offsets() == [1]


async def unsubscribed(broker: Broker) -> None:
    """Return once Redis confirmed every UNSUBSCRIBE the node sent: a publish after it is not
    received (Redis may run a publish from another connection before an UNSUBSCRIBE it had
    not read yet)."""
    if not isinstance(broker, RedisBroker):
        return
    subscriber = broker._subscriber
    subscriptions = (
        list(subscriber._shards.values())
        if isinstance(subscriber, ClusterSubscriber)
        else [subscriber]
    )
    await until(lambda: not any(s._unsubscribing for s in subscriptions))


async def test_one_part_of_the_broker_back_repairs_only_its_rooms(node: Node) -> None:
    """`on_broker_state(True, rooms=...)` (one server of several is back) repairs the rooms it
    names and leaves the others alone."""
    first, second = await member_in(node, "r1"), await member_in(node, "r2")
    for room in ("r1", "r2"):
        await node.broker.unsubscribe(room)
        await unsubscribed(node.broker)
        await node.broker.publish(room, message_prefix("t", 0, room, "x"))
        await node.broker.subscribe(room)
    node.delivery.on_broker_state(True, rooms=lambda room: room == "r1")
    positions = node.delivery._positions
    assert positions["r1"].pending is not None  # being repaired
    assert positions["r2"].pending is None
    await until(lambda: len(first.frames) >= 1)
    assert (first.offsets(), second.frames) == ([1], [])
    node.delivery.on_broker_state(True)
    await until(lambda: len(second.frames) >= 1)
    assert second.offsets() == [1]


async def test_an_offset_gone_back_starts_the_room_afresh(redis_server: RedisProcess) -> None:
    """When history shows a lower latest offset than this node delivered, under the same epoch
    (a replica promoted without the last messages), the room is started afresh: the node takes
    the offsets that come again instead of dropping them as duplicates."""
    node = Node(Settings(node_id="n1"), broker=RedisBroker(redis_server.url))
    await node.start()
    try:
        connection = await member_in(node, "r1")
        for n in range(3):
            await node.broker.publish("r1", message_prefix("t", n, "r1", "x"))
        # The store as a replica that never got the third message has it.
        offset_key, _, stream_key = wire.room_keys("r1")[:3]
        redis = Redis.from_url(redis_server.url)
        entries = await redis.xrange(stream_key)
        await redis.delete(stream_key)
        for entry_id, fields in entries[:2]:
            await redis.xadd(stream_key, fields, id=entry_id)
        await redis.set(offset_key, 2)
        await redis.aclose()
        node.delivery.on_broker_state(True)
        # (its members are told to reconnect: a member holds offset 3 and would drop the new 3)
        await until(lambda: node.delivery._positions["r1"].offset == 2)
        await node.broker.publish("r1", message_prefix("t", 3, "r1", "x"))
        await until(lambda: node.delivery._positions["r1"].offset == 3)
        assert connection.offsets() == [1, 2, 3]
    finally:
        await node.shutdown()
