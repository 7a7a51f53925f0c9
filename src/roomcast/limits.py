"""Abuse limits: frames per second per connection, connections per IP, per username and per
node, and a time limit on the HTTP handshake.

Every check is a few arithmetic operations on the connection's own state or on a counter: a
client over a limit is refused or closed, and nothing waits, so other members are never slowed
down. docs/security.md lists the defaults.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import Counter
from enum import Enum
from typing import Any

from .codes import CloseCode, ErrorCode
from .errors import Refused
from .log import log_event
from .settings import Settings

__all__ = ["Admission", "ConnectionLimits", "Lease", "TokenBucket", "handshake_protocol"]


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


class ConnectionLimits:
    """Connections on this node: in total, per client IP address and per username.

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
        if self.total is not None and self.count >= self.total:
            raise _too_many("this server has too many connections")
        if ip is not None and self.per_ip is not None and self.by_ip[ip] >= self.per_ip:
            raise _too_many("too many connections from this address")
        if self.per_user is not None and self.by_user[username] >= self.per_user:
            raise _too_many("too many connections of this username")
        self.count += 1
        if ip is not None:
            self.by_ip[ip] += 1
        self.by_user[username] += 1
        return Lease(self, ip, username)

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


@functools.cache
def handshake_protocol(timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's h11 HTTP protocol, closing sockets whose request head is not complete within
    `timeout` seconds of connecting (or of the previous response on a kept-alive socket).

    uvicorn itself only times out idle kept-alive sockets, so a client that connects and then
    sends nothing, or its headers one byte at a time, would hold a socket forever.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HandshakeTimeoutProtocol(H11Protocol):
        _handshake_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def handle_events(self) -> None:
            super().handle_events()
            if self.conn.their_state is not h11.IDLE:
                self._disarm()

        def handle_websocket_upgrade(self, event: Any) -> None:
            self._disarm()
            super().handle_websocket_upgrade(event)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._handshake_timer = self.loop.call_later(timeout, self._expired)

        def _disarm(self) -> None:
            if self._handshake_timer is not None:
                self._handshake_timer.cancel()
                self._handshake_timer = None

        def _expired(self) -> None:
            self._handshake_timer = None
            if not self.transport.is_closing():
                log_event(
                    "connection.handshake_timeout",
                    level=10,
                    client=self.client[0] if self.client else None,
                )
                self.transport.close()

    return HandshakeTimeoutProtocol
