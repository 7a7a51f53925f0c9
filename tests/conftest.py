"""Shared fixtures: servers and redis-server as real processes."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from websockets.protocol import State

from tests.harness import (
    OPEN_CLIENTS,
    RedisClusterProcess,
    RedisProcess,
    SentinelSet,
    ServerProcess,
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every coroutine test gets :func:`_abort_clients_left_open` (the sync ones, e.g. the
    Playwright tests, run their own loops and make no :class:`Client`)."""
    for item in items:
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj):
            item.fixturenames.append("_abort_clients_left_open")


@pytest.fixture
async def _abort_clients_left_open() -> AsyncIterator[None]:
    """A test that fails before it closes its clients does not leave their sockets to fail
    the next test on the same worker (an unclosed socket is a ResourceWarning, an error)."""
    yield
    left = [client for client in OPEN_CLIENTS if client.ws.state is not State.CLOSED]
    OPEN_CLIENTS.clear()
    for client in left:
        client.ws.transport.abort()
    if left:
        await asyncio.sleep(0)  # the transports' connection_lost runs in the next iteration


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


@pytest.fixture(scope="session")
def redis_cluster_session() -> Iterator[RedisClusterProcess]:
    """A 3-master Redis Cluster shared by the tests of one process (each flushes it)."""
    cluster = RedisClusterProcess(masters=3).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_cluster(redis_cluster_session: RedisClusterProcess) -> RedisClusterProcess:
    """The shared 3-master Redis Cluster, emptied for this test (tests that stop or kill a
    node start a cluster of their own: `RedisClusterProcess`)."""
    for node in redis_cluster_session.masters():
        redis_cluster_session.cli(node.port, "flushall")
    redis_cluster_session.wait_ok()
    return redis_cluster_session
