"""Fixtures that put a test module's servers on the plain ASGI path (`--fast-path false`):
uvicorn's own WebSocket protocol, every frame through ASGI `send`, none of
transports/uvicorn.py's WebSocket code. It is the path `roomcast serve` takes when uvicorn
lacks an internal. Import both fixtures into a module that star-imports another's tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.harness import ServerProcess, running_server

PLAIN = ("--fast-path", "false")


@pytest.fixture(scope="module", name="shared_server")
def plain_shared_server() -> Iterator[ServerProcess]:
    """The module's shared server, on the plain path."""
    with running_server(*PLAIN) as process:
        yield process


@pytest.fixture(name="start_server")
def plain_start_server(
    start_server: Callable[..., ServerProcess],
) -> Callable[..., ServerProcess]:
    """Servers started by a test, on the plain path."""

    def start(*args: str, env: dict[str, str] | None = None) -> ServerProcess:
        return start_server(*PLAIN, *args, env=env)

    return start
