"""Fixtures of the contract suites: every test runs on memory:// and on redis://."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from roomcast.brokers import Broker, MemoryBroker, Publication, Signal
from roomcast.brokers.redis import RedisBroker
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

    def on_broker_state(self, available: bool) -> None:
        self.states.append(available)


@pytest.fixture(params=["memory", "redis"])
async def make_broker(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    """Builds started brokers of one kind (several share one Redis); closes them at the end."""
    brokers: list[Broker] = []
    redis: RedisProcess | None = (
        request.getfixturevalue("redis_server") if request.param == "redis" else None
    )

    async def make(node_id: str = "n1", **options: float) -> tuple[Broker, Recorder]:
        broker: Broker = (
            MemoryBroker(**options)  # type: ignore[arg-type]
            if redis is None
            else RedisBroker(redis.url, **options)  # type: ignore[arg-type]
        )
        recorder = Recorder()
        await broker.start(node_id, recorder)
        brokers.append(broker)
        return broker, recorder

    yield make
    for broker in brokers:
        await broker.close()
