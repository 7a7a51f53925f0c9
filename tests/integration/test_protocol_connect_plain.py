"""test_protocol_connect.py again, on the plain ASGI path (see plain_path.py)."""

from __future__ import annotations

from tests.integration.plain_path import plain_shared_server, plain_start_server
from tests.integration.test_protocol_connect import *  # noqa: F403

__all__ = ["plain_shared_server", "plain_start_server"]


def test_the_server_runs_the_plain_path(shared_server: ServerProcess) -> None:  # noqa: F405
    """The flag really selects the plain path (the server says so at startup)."""
    assert shared_server.log is not None
    assert any("transport.plain_path" in line for line in shared_server.log.lines)
