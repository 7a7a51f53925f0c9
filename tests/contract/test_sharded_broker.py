"""What only the sharded broker has: a lease and a sweeper per server, one server down."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from redis.asyncio import Redis

from roomcast.brokers.redis import wire
from roomcast.brokers.sharded import ShardedBroker, shard_of
from roomcast.errors import BrokerUnavailable
from roomcast.protocol import message_prefix
from tests.contract.conftest import Recorder
from tests.contract.test_redis_presence import until
from tests.harness import RedisProcess

Make = Callable[..., Awaitable[tuple[ShardedBroker, Recorder]]]


def room_on(index: int, name: str = "room") -> str:
    """A room id starting with `name` that lives on shard `index` of two."""
    n = 0
    while shard_of(f"{name}{n}", 2) != index:
        n += 1
    return f"{name}{n}"


@pytest.fixture
async def make(two_redis_servers: list[RedisProcess]) -> AsyncIterator[Make]:
    """Starts sharded brokers (nodes) over the same two servers; closes them at the end."""
    brokers: list[ShardedBroker] = []

    async def start(node_id: str, **options: float) -> tuple[ShardedBroker, Recorder]:
        urls = [server.url for server in two_redis_servers]
        broker = ShardedBroker.from_urls(urls, **options)  # type: ignore[arg-type]
        recorder = Recorder()
        await broker.start(node_id, recorder)
        brokers.append(broker)
        return broker, recorder

    yield start
    for broker in brokers:
        await broker.close()


async def test_a_dead_node_is_swept_on_every_shard_once(make: Make) -> None:
    """A node that stops renewing loses its members on both servers, each returned to one
    survivor only."""
    a, seen_a = await make("a", presence_ttl=1.5)
    _, seen_b = await make("b", presence_ttl=1.5)
    c, _ = await make("c", presence_ttl=1.5)
    rooms = [room_on(0), room_on(1)]
    for room in rooms:
        await c.add_member(room, "carol", "c1")
    for shard in c.shards:  # c stops renewing everywhere, as a killed process would
        for task in shard._tasks:  # type: ignore[attr-defined]
            task.cancel()
    await until(lambda: len(seen_a.lost) + len(seen_b.lost) == 2)
    assert sorted(seen_a.lost + seen_b.lost) == sorted((r, ["carol"], "c") for r in rooms)
    assert await a.rooms() == {}


async def test_one_server_down_takes_only_its_rooms(
    make: Make, two_redis_servers: list[RedisProcess]
) -> None:
    """With server #1 stopped: its rooms raise BrokerUnavailable, the others' work; the broker
    stays available and names the server down; with both stopped, ping fails."""
    broker, _ = await make("a")
    up, down = room_on(0), room_on(1)
    await broker.subscribe(up)
    await broker.subscribe(down)
    two_redis_servers[1].stop()
    await until(lambda: not broker.shards[1].available)
    assert (await broker.publish(up, message_prefix("t", 1, up, "x"))).offset == 1
    with pytest.raises(BrokerUnavailable):
        await broker.publish(down, message_prefix("t", 1, down, "x"))
    with pytest.raises(BrokerUnavailable):
        await broker.add_member(down, "bob", "c1")
    with pytest.raises(BrokerUnavailable, match="rooms of server #1"):
        await broker.rooms()
    assert broker.available
    await broker.ping()
    assert await broker.shards_down() == [f"#1 {two_redis_servers[1].url}"]
    two_redis_servers[0].stop()
    await until(lambda: not broker.available)
    with pytest.raises(BrokerUnavailable, match="no server answers"):
        await broker.ping()


async def test_stats_live_on_the_first_server(
    make: Make, two_redis_servers: list[RedisProcess]
) -> None:
    """The admin page's stats messages are kept on server #0 only."""
    broker, _ = await make("a")
    await broker.put_stats("a", b"{}", 30)
    counts = []
    for server in two_redis_servers:
        redis = Redis.from_url(server.url)
        counts.append(await redis.exists(wire.stats_key("a")))
        await redis.aclose()
    assert counts == [1, 0]
    assert await broker.all_stats() == {"a": b"{}"}
