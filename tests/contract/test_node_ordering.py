"""A node delivers each room in offset order on both brokers, repairing gaps from history."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest

from roomcast.brokers import Broker, MemoryBroker
from roomcast.brokers.redis import RedisBroker
from roomcast.node import Node
from roomcast.protocol import message_prefix
from roomcast.rooms import Member
from roomcast.settings import Settings
from tests.harness import RedisProcess


class Recording:
    """A Connection that keeps what it is sent."""

    def __init__(self) -> None:
        self.frames: list[str] = []

    def send(self, data: str) -> None:
        self.frames.append(data)

    def close(self, code: int, reason: str = "") -> None:
        pass

    def abort(self, code: int, reason: str = "") -> None:
        pass

    @property
    def buffered(self) -> int:
        return 0

    def offsets(self) -> list[int]:
        return [orjson.loads(f)["offset"] for f in self.frames]


@pytest.fixture(params=["memory", "redis"])
async def node(request: pytest.FixtureRequest) -> AsyncIterator[Node]:
    """A started node on one broker kind."""
    broker: Broker
    if request.param == "memory":
        broker = MemoryBroker()
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
