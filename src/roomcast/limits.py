"""Abuse limits: frames per second per connection, connections per IP, per username and per
node (WebSocket handshakes still under way included).

Every check is a few arithmetic operations on the connection's own state or on a counter: a
client over a limit is refused or closed, and nothing waits, so other members are never slowed
down. docs/security.md lists the defaults.
"""

from __future__ import annotations

import time
from collections import Counter
from enum import Enum

from .codes import CloseCode, ErrorCode
from .errors import Refused
from .settings import Settings

__all__ = ["Admission", "ConnectionLimits", "Lease", "Reservation", "TokenBucket"]


class Admission(Enum):
    """What a :class:`TokenBucket` says about one frame."""

    OK = "ok"
    """Handle the frame."""
    LIMITED = "limited"
    """Refuse the frame with a `rate_limited` error frame; the connection stays."""
    EXCEEDED = "exceeded"
    """The client kept sending while limited: close with 4429."""


class TokenBucket:
    """Frames per second of one connection.

    The bucket holds up to `burst` tokens and gains `rate` per second; each frame takes one.
    A frame that finds the bucket empty is refused (LIMITED) and still takes a token, so that
    the debt grows while the client keeps sending; once the debt exceeds `burst` the verdict is
    EXCEEDED. A client that pauses after being limited pays its debt back at `rate` per second
    and goes on; one that floods is closed after about `burst` refused frames.

    Args:
        rate: tokens gained per second.
        burst: the bucket's size.
    """

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp = time.monotonic()

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenBucket | None:
        """The bucket `settings.rate_limit` and `rate_burst` describe, or None when off."""
        if settings.rate_limit is None:
            return None
        return cls(settings.rate_limit, settings.rate_burst)

    def take(self) -> Admission:
        """Account for one frame."""
        now = time.monotonic()
        tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate) - 1.0
        self._stamp = now
        self._tokens = tokens
        if tokens >= 0:
            return Admission.OK
        if tokens < -self.burst:
            return Admission.EXCEEDED
        return Admission.LIMITED


class Lease:
    """One admitted connection's place in the counters; :meth:`release` gives it back."""

    __slots__ = ("_limits", "ip", "username")

    def __init__(self, limits: ConnectionLimits, ip: str | None, username: str) -> None:
        self._limits: ConnectionLimits | None = limits
        self.ip = ip
        self.username = username

    def release(self) -> None:
        """Give the place back; idempotent."""
        limits, self._limits = self._limits, None
        if limits is not None:
            limits._release(self)


class Reservation:
    """One WebSocket handshake under way, counted by :meth:`ConnectionLimits.reserve` until
    :meth:`release` (the 101 response, or the socket's end)."""

    __slots__ = ("_limits", "ip")

    def __init__(self, limits: ConnectionLimits, ip: str | None) -> None:
        self._limits: ConnectionLimits | None = limits
        self.ip = ip

    def release(self) -> None:
        """Stop counting the handshake; idempotent."""
        limits, self._limits = self._limits, None
        if limits is not None:
            limits.pending -= 1
            if self.ip is not None:
                _decrement(limits.pending_by_ip, self.ip)


class ConnectionLimits:
    """Connections on this node: in total, per client IP address and per username.

    WebSocket handshakes still under way (counted by the transport with :meth:`reserve`) count
    toward the total and per-IP limits too, so that sockets that never finish their handshake
    cannot crowd out admitted ones.

    Args:
        total: connections on this node, or None for no limit.
        per_ip: connections from one IP address, or None.
        per_user: connections of one username over all rooms, or None.
    """

    def __init__(self, total: int | None, per_ip: int | None, per_user: int | None) -> None:
        self.total = total
        self.per_ip = per_ip
        self.per_user = per_user
        self.count = 0
        self.by_ip: Counter[str] = Counter()
        self.by_user: Counter[str] = Counter()
        self.pending = 0
        self.pending_by_ip: Counter[str] = Counter()

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        """The limits `settings.max_connections*` describe."""
        return cls(
            settings.max_connections,
            settings.max_connections_per_ip,
            settings.max_connections_per_user,
        )

    def acquire(self, ip: str | None, username: str) -> Lease:
        """Count one more connection, or refuse it.

        Raises:
            Refused: 4429 when a limit is reached.
        """
        if self.total is not None and self.count + self.pending >= self.total:
            raise _too_many("this server has too many connections")
        if (
            ip is not None
            and self.per_ip is not None
            and self.by_ip[ip] + self.pending_by_ip[ip] >= self.per_ip
        ):
            raise _too_many("too many connections from this address")
        if self.per_user is not None and self.by_user[username] >= self.per_user:
            raise _too_many("too many connections of this username")
        self.count += 1
        if ip is not None:
            self.by_ip[ip] += 1
        self.by_user[username] += 1
        return Lease(self, ip, username)

    def reserve(self, ip: str | None) -> Reservation:
        """Count one more WebSocket handshake under way, or refuse it when the handshakes
        under way alone reach the total or per-IP limit.

        Raises:
            Refused: 4429 (answered as HTTP 429 by the transport).
        """
        if self.total is not None and self.pending >= self.total:
            raise _too_many("too many handshakes under way on this server")
        if ip is not None and self.per_ip is not None and self.pending_by_ip[ip] >= self.per_ip:
            raise _too_many("too many handshakes under way from this address")
        self.pending += 1
        if ip is not None:
            self.pending_by_ip[ip] += 1
        return Reservation(self, ip)

    def _release(self, lease: Lease) -> None:
        self.count -= 1
        if lease.ip is not None:
            _decrement(self.by_ip, lease.ip)
        _decrement(self.by_user, lease.username)


def _decrement(counter: Counter[str], key: str) -> None:
    left = counter[key] - 1
    if left > 0:
        counter[key] = left
    else:
        del counter[key]


def _too_many(message: str) -> Refused:
    return Refused(CloseCode.RATE_LIMITED, ErrorCode.RATE_LIMITED, message)
