"""--allowed-origins: cross-site WebSocket hijacking is refused with 1008 after the upgrade."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import Client, ServerProcess, running_server


@pytest.fixture(scope="module")
def default_server() -> Iterator[ServerProcess]:
    """A server with the default origin policy."""
    with running_server() as server:
        yield server


@pytest.fixture(scope="module")
def listed_server() -> Iterator[ServerProcess]:
    """A server allowing two listed origins only."""
    with running_server(
        "--allowed-origins", "https://app.example,https://*.trusted.example"
    ) as server:
        yield server


async def welcomed(server: ServerProcess, name: str, origin: str | None) -> bool:
    """Whether a connection from `origin` gets a welcome (True) or a 1008 refusal (False)."""
    headers = {"Origin": origin} if origin is not None else None
    client = await Client.connect(server.ws_url, name, "r1", headers=headers)
    frame = await client.recv()
    if frame["topic"] == "welcome":
        await client.close()
        return True
    assert frame["topic"] == "error"
    assert frame["payload"]["code"] == "forbidden"
    code, _ = await client.closed()
    assert code == 1008
    return False


async def test_default_allows_no_origin_and_same_host(default_server: ServerProcess) -> None:
    """By default, clients without Origin and pages of the same host connect."""
    assert await welcomed(default_server, "cli", None)
    assert await welcomed(default_server, "page", default_server.url)


async def test_default_refuses_other_sites(default_server: ServerProcess) -> None:
    """By default, another site's page (or a sandboxed `null` origin) is refused with 1008."""
    assert not await welcomed(default_server, "evil", "https://evil.example")
    assert not await welcomed(default_server, "sandboxed", "null")
    port = default_server.port
    assert not await welcomed(default_server, "other-port", f"http://127.0.0.1:{port + 1}")


async def test_listed_origins_only(listed_server: ServerProcess) -> None:
    """With a list, only listed origins (and `*` patterns) connect; same host is not implied."""
    assert await welcomed(listed_server, "app", "https://app.example")
    assert await welcomed(listed_server, "sub", "https://eu.trusted.example")
    assert await welcomed(listed_server, "cli", None)
    assert not await welcomed(listed_server, "same", listed_server.url)
    assert not await welcomed(listed_server, "evil", "https://app.example.evil.test")
    assert not await welcomed(listed_server, "http", "http://app.example")
