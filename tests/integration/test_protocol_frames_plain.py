"""test_protocol_frames.py again, on the plain ASGI path (see plain_path.py)."""

from __future__ import annotations

from tests.integration.plain_path import plain_shared_server, plain_start_server
from tests.integration.test_protocol_frames import *  # noqa: F403

__all__ = ["plain_shared_server", "plain_start_server"]
