"""Fixtures of the contract suites: every test runs on memory://, on redis://, on rooms
sharded over two Redis servers (`redis://A,redis://B`), on a master found through Sentinel
(`redis+sentinel://`, with a replica) and on a 3-master Redis Cluster (`redis+cluster://`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from roomcast.brokers import Broker, MemoryBroker, Publication, Signal
from roomcast.brokers.redis import RedisBroker
from roomcast.brokers.sharded import ShardedBroker
from tests.harness import RedisProcess

Factory = Callable[..., Awaitable[tuple[Broker, "Recorder"]]]


class Recorder:
    """A BrokerListener that records what arrives."""

    def __init__(self) -> None:
        self.publications: list[Publication] = []
        self.signals: list[Signal] = []
        self.lost: list[tuple[str, list[str], str]] = []
        self.states: list[bool] = []

    def on_publication(self, publication: Publication) -> None:
        self.publications.append(publication)

    def on_signal(self, signal: Signal) -> None:
        self.signals.append(signal)

    def on_members_lost(self, room: str, usernames: list[str], node_id: str) -> None:
        self.lost.append((room, usernames, node_id))

    def on_broker_state(self, available: bool, rooms: Callable[[str], bool] | None = None) -> None:
        if rooms is None:
            self.states.append(available)


@pytest.fixture(params=["memory", "redis", "sharded", "sentinel", "cluster"])
async def make_broker(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    """Builds started brokers of one kind (several share the same Redis servers); closes
    them at the end."""
    brokers: list[Broker] = []
    urls: list[str] = []
    if request.param == "redis":
        urls = [request.getfixturevalue("redis_server").url]
    elif request.param == "sharded":
        urls = [server.url for server in request.getfixturevalue("two_redis_servers")]
    elif request.param == "sentinel":
        urls = [request.getfixturevalue("sentinel_set").url]
    elif request.param == "cluster":
        urls = [request.getfixturevalue("redis_cluster").url]

    async def make(node_id: str = "n1", **options: float) -> tuple[Broker, Recorder]:
        broker: Broker
        if not urls:
            broker = MemoryBroker(**options)  # type: ignore[arg-type]
        elif len(urls) == 1:
            broker = RedisBroker(urls[0], **options)  # type: ignore[arg-type]
        else:
            broker = ShardedBroker.from_urls(urls, **options)  # type: ignore[arg-type]
        recorder = Recorder()
        await broker.start(node_id, recorder)
        brokers.append(broker)
        return broker, recorder

    yield make
    for broker in brokers:
        await broker.close()


Make = Callable[..., Awaitable[tuple[RedisBroker, Recorder]]]


@pytest.fixture
def presence_url(redis_server: RedisProcess) -> str:
    """Where `make` starts its Redis brokers (a module may give another)."""
    return redis_server.url


@pytest.fixture
async def make(presence_url: str) -> AsyncIterator[Make]:
    """Starts Redis brokers (nodes) on one store; closes them at the end."""
    brokers: list[RedisBroker] = []

    async def start(
        node_id: str, url: str = presence_url, **options: float
    ) -> tuple[RedisBroker, Recorder]:
        broker = RedisBroker(url, **options)  # type: ignore[arg-type]
        recorder = Recorder()
        await broker.start(node_id, recorder)
        brokers.append(broker)
        return broker, recorder

    yield start
    for broker in brokers:
        await broker.close()


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll a condition with a deadline (leases and sweeps are timed, not evented)."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.02)
