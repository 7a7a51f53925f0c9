"""Issue 14 item 1: WebSocket handshakes under way count toward the connection limits."""

from __future__ import annotations

import pytest

from roomcast.errors import Refused
from roomcast.limits import ConnectionLimits


def test_handshakes_under_way_count_toward_admissions() -> None:
    """Two handshakes under way from one address fill its limit of 2: a third handshake and
    an admission from that address are refused until one of them ends."""
    limits = ConnectionLimits(total=10, per_ip=2, per_user=None)
    first = limits.reserve("10.0.0.1")
    limits.reserve("10.0.0.1")
    with pytest.raises(Refused):
        limits.reserve("10.0.0.1")
    with pytest.raises(Refused):
        limits.acquire("10.0.0.1", "alice")
    limits.acquire("10.0.0.2", "bob")  # another address is not affected
    first.release()
    first.release()  # idempotent
    assert limits.pending == 1
    limits.acquire("10.0.0.1", "alice")


def test_handshakes_alone_are_bounded_by_the_total() -> None:
    """Handshakes under way past the node's total are refused; admitted plus under way may
    not pass it either."""
    limits = ConnectionLimits(total=2, per_ip=None, per_user=None)
    limits.acquire(None, "a")
    reservation = limits.reserve(None)
    with pytest.raises(Refused):
        limits.acquire(None, "b")
    reservation.release()
    limits.acquire(None, "b")
    limits.reserve(None)
    limits.reserve(None)
    with pytest.raises(Refused):
        limits.reserve(None)
