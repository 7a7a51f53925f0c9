"""The Broker contract for idempotent publish (docs/protocol.md, section 10), on memory:// and
redis://: a key publishes once per room within its window, atomically with the publish."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from roomcast.brokers import MemoryBroker
from roomcast.brokers.redis import RedisBroker
from roomcast.brokers.redis.wire import idempotency_key
from roomcast.protocol import message_prefix
from tests.contract.conftest import Factory
from tests.harness import RedisProcess


def prefix(room: str, n: int) -> str:
    return message_prefix("chat", {"n": n}, room, "alice")


async def test_a_repeated_key_publishes_nothing(make_broker: Factory) -> None:
    """The second publish with a key returns the first offset as a duplicate and delivers,
    retains and counts nothing."""
    broker, recorder = await make_broker()
    await broker.subscribe("r1")
    first = await broker.publish("r1", prefix("r1", 1), key="k1")
    again = await broker.publish("r1", prefix("r1", 2), key="k1")
    assert (first.offset, first.duplicate) == (1, False)
    assert (again.offset, again.epoch, again.duplicate) == (1, first.epoch, True)
    assert [p.offset for p in recorder.publications] == [1]
    following = await broker.publish("r1", prefix("r1", 3))
    assert following.offset == 2
    page = await broker.history("r1")
    assert [p.offset for p in page.publications] == [1, 2]
    assert page.publications[0].frame == prefix("r1", 1) + "1}"


async def test_keys_are_per_room(make_broker: Factory) -> None:
    """The same key in another room is another publish; another key is another publish."""
    broker, _ = await make_broker()
    assert (await broker.publish("a", prefix("a", 1), key="k")).duplicate is False
    assert (await broker.publish("b", prefix("b", 1), key="k")).duplicate is False
    assert (await broker.publish("a", prefix("a", 2), key="other")).offset == 2
    assert (await broker.publish("a", prefix("a", 3), key="k")).duplicate is True


async def test_a_keyed_message_to_one_member_is_a_duplicate_too(make_broker: Factory) -> None:
    """Keys are shared by room messages and messages to one member of the room."""
    broker, recorder = await make_broker()
    await broker.subscribe("r1")
    first = await broker.publish("r1", prefix("r1", 1), "bob", key="k")
    again = await broker.publish("r1", prefix("r1", 1), key="k")
    assert again.duplicate
    assert again.offset == first.offset
    assert [p.to for p in recorder.publications] == ["bob"]


async def test_a_keyed_ephemeral_frame_is_delivered_once(make_broker: Factory) -> None:
    """An ephemeral frame's key is the room's too: its repeat delivers nothing and answers
    offset 0, a room message repeating it publishes nothing (offset 0 back), and an
    ephemeral frame repeating a room message's key answers that one's offset and epoch."""
    broker, recorder = await make_broker()
    await broker.subscribe("r1")
    assert await broker.publish_ephemeral("r1", '{"topic":"typing"}', key="e") is None
    assert await broker.publish_ephemeral("r1", '{"topic":"typing"}', key="e") == (0, "")
    assert await broker.publish_ephemeral("r1", '{"topic":"typing"}') is None  # no key
    again = await broker.publish("r1", prefix("r1", 1), key="e")
    assert (again.offset, again.duplicate) == (0, True)
    first = await broker.publish("r1", prefix("r1", 2), key="m")
    seen = await broker.publish_ephemeral("r1", '{"topic":"typing"}', key="m")
    assert seen == (first.offset, first.epoch) == (1, first.epoch)
    assert [p.offset for p in recorder.publications] == [0, 0, 1]


async def test_seen_key_answers_the_first_publish(make_broker: Factory) -> None:
    """`seen_key` reads a room's key without publishing: the first publish's offset and
    epoch, (0, "") for an ephemeral frame's, None for a key not published (or another
    room's)."""
    broker, _ = await make_broker()
    first = await broker.publish("r1", prefix("r1", 1), "bob", key="k")
    await broker.publish_ephemeral("r1", '{"topic":"typing"}', key="e")
    assert await broker.seen_key("r1", "k") == (1, first.epoch)
    assert await broker.seen_key("r1", "e") == (0, "")
    assert await broker.seen_key("r1", "other") is None
    assert await broker.seen_key("r2", "k") is None
    assert (await broker.publish("r1", prefix("r1", 2))).offset == 2  # nothing was taken


async def test_concurrent_publishes_with_one_key_publish_once(make_broker: Factory) -> None:
    """Of many publishes with one key in flight at once (on redis://, from two nodes), exactly
    one publishes; every one of them answers its offset."""
    one, recorder = await make_broker("n1")
    two = one if isinstance(one, MemoryBroker) else (await make_broker("n2"))[0]
    await one.subscribe("r1")
    results = await asyncio.gather(
        *((one if n % 2 else two).publish("r1", prefix("r1", n), key="same") for n in range(20))
    )
    assert {r.offset for r in results} == {1}
    assert sum(not r.duplicate for r in results) == 1
    assert [p.offset for p in recorder.publications] == [1]


async def test_a_key_expires_after_its_window(make_broker: Factory) -> None:
    """Once the window is over, the key publishes again."""
    broker, _ = await make_broker(idempotency_window=0.05)
    first = await broker.publish("r1", prefix("r1", 1), key="k")
    # Waiting for a time to live to run out is the behaviour under test, bounded by the loop.
    async with asyncio.timeout(5):
        while True:
            again = await broker.publish("r1", prefix("r1", 2), key="k")
            if not again.duplicate:
                break
            await asyncio.sleep(0.02)
    assert again.offset > first.offset


async def test_redis_keeps_a_key_in_the_rooms_slot_for_300_seconds(
    redis_server: RedisProcess,
) -> None:
    """On redis://, the key lives beside the room's keys (its hash tag) with a 300 s TTL."""
    broker = RedisBroker(redis_server.url, presence=False)
    await broker.start("p", _Silent())
    admin = aioredis.from_url(redis_server.url)
    try:
        await broker.publish("r1", prefix("r1", 1), key="k:{x}")
        name = idempotency_key("r1", "k:{x}")
        assert name.startswith("rc:{r1}:")
        ttl = await admin.pttl(name)
        assert 299_000 < ttl <= 300_000
        assert (await admin.get(name)).split(b" ")[0] == b"1"
    finally:
        await admin.aclose()
        await broker.close()


class _Silent:
    def on_publication(self, publication: object) -> None:
        pass

    def on_signal(self, signal: object) -> None:
        pass

    def on_members_lost(self, room: str, usernames: list[str], node_id: str) -> None:
        pass

    def on_broker_state(self, available: bool) -> None:
        pass
