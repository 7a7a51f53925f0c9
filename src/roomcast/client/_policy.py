"""What to do after a disconnect: the close-code table of the protocol and the backoff (pure)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum, StrEnum

__all__ = ["Backoff", "ClientState", "Reconnect", "reconnect_rule"]


class ClientState(StrEnum):
    """Where a :class:`~roomcast.client.Client` is in its life."""

    IDLE = "idle"
    """Created, `connect()` not called yet."""
    CONNECTING = "connecting"
    """Opening the first connection."""
    CONNECTED = "connected"
    """Joined: the welcome frame arrived."""
    RECONNECTING = "reconnecting"
    """The connection was lost; waiting for the next attempt or making it."""
    CLOSED = "closed"
    """Closed for good: `close()` was called, or the server said not to come back."""


class Reconnect(Enum):
    """How to come back after a connection ended with a given close code."""

    NEVER = "never"
    """Stay closed (the same request would be refused again)."""
    NEW_TOKEN = "new_token"
    """Only with a fresh token from the token provider."""
    AT_ONCE = "at_once"
    """At once with jitter (the server is restarting)."""
    BACKOFF = "backoff"
    """After an exponential backoff with jitter."""


_NEVER = frozenset({1000, 1007, 1008, 1009, 4400, 4403, 4409, 4499})


def reconnect_rule(close_code: int | None) -> Reconnect:
    """The protocol's rule for `close_code` (None: the network failed, no close frame came).

    Codes the table does not name (1006 abnormal closure, other 4xxx) are treated as transient.
    """
    if close_code in _NEVER:
        return Reconnect.NEVER
    if close_code == 4401:
        return Reconnect.NEW_TOKEN
    if close_code in (1001, 1012):
        return Reconnect.AT_ONCE
    return Reconnect.BACKOFF


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter.

    Attempt n waits between half and all of `min(max_delay, min_delay * factor**n)`, so many
    clients disconnected together do not come back together. An `AT_ONCE` or `NEW_TOKEN`
    reconnect right after a working connection waits only a random `0..jitter` seconds.

    Attributes:
        min_delay: the first backoff delay in seconds (default 0.5).
        max_delay: the longest delay in seconds (default 20).
        factor: growth per failed attempt (default 2).
        jitter: the longest wait of an immediate reconnect, in seconds (default 0.5).
    """

    min_delay: float = 0.5
    max_delay: float = 20.0
    factor: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.min_delay < 0 or self.max_delay < self.min_delay:
            raise ValueError("need 0 <= min_delay <= max_delay")
        if self.factor < 1 or self.jitter < 0:
            raise ValueError("need factor >= 1 and jitter >= 0")

    def delay(self, rule: Reconnect, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before reconnect attempt number `attempt` (0 after a working
        connection, growing by one for each attempt that failed since)."""
        uniform = (rng or random).uniform
        if attempt == 0 and rule in (Reconnect.AT_ONCE, Reconnect.NEW_TOKEN):
            return uniform(0.0, self.jitter)
        cap = min(self.max_delay, self.min_delay * self.factor ** min(attempt, 64))
        return uniform(cap / 2, cap)
