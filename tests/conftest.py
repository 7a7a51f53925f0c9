"""Shared fixtures: servers and redis-server as real processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.harness import RedisProcess, SentinelSet, ServerProcess


@pytest.fixture
def start_server() -> Iterator[Callable[..., ServerProcess]]:
    """Start `roomcast serve` processes with the given flags; all are stopped at the end."""
    servers: list[ServerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> ServerProcess:
        server = ServerProcess(["--port", "0", *args], env or {})
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    """One standalone server with the memory broker."""
    return start_server()


@pytest.fixture
def redis_server() -> Iterator[RedisProcess]:
    """A fresh redis-server for one test."""
    redis = RedisProcess().start()
    yield redis
    redis.stop()


@pytest.fixture
def sentinel_set() -> Iterator[SentinelSet]:
    """A fresh Redis master, replica and Sentinel for one test."""
    processes = SentinelSet()
    try:
        yield processes.start()
    finally:
        processes.stop()


@pytest.fixture
def two_redis_servers() -> Iterator[list[RedisProcess]]:
    """Two fresh redis-servers for one test (the shards of a sharded broker)."""
    servers = [RedisProcess().start()]
    try:
        servers.append(RedisProcess().start())
        yield servers
    finally:
        for server in servers:
            server.stop()
