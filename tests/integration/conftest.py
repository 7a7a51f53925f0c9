"""Fixtures shared by the integration tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.harness import RedisProcess, ServerProcess, running_server
from tests.integration.rooms_support import Pair, Start, deploy


@pytest.fixture(scope="module", name="shared_server")
def shared_server_fixture() -> Iterator[ServerProcess]:
    """One memory-broker server for a whole module; each test uses rooms of its own."""
    with running_server() as process:
        yield process


@pytest.fixture
def room() -> str:
    """A room id no other test uses."""
    return f"r-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def room2() -> str:
    """A second room id no other test uses."""
    return f"q-{uuid.uuid4().hex[:10]}"


@pytest.fixture(params=["memory", "redis"])
def kind(request: pytest.FixtureRequest) -> str:
    """The broker a test runs on: one memory:// node, or two nodes sharing Redis."""
    return str(request.param)


@pytest.fixture
def redis_or_none(request: pytest.FixtureRequest, kind: str) -> RedisProcess | None:
    """A fresh redis-server for the redis kind."""
    return request.getfixturevalue("redis_server") if kind == "redis" else None


@pytest.fixture
def pair(kind: str, start_server: Start, redis_or_none: RedisProcess | None) -> Pair:
    """Two nodes with the default flags (see :func:`deploy`)."""
    return deploy(kind, start_server, redis_or_none)
