"""Fixtures shared by the integration tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.harness import ServerProcess, running_server


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
