"""Identity and room access: the resolver interface and the anonymous resolver.

A resolver turns a connection request into an :class:`Identity` or refuses it with
:class:`~roomcast.errors.Refused` (4401 unauthenticated, 4403 forbidden). Applications may pass
their own async callable (their session cookie, their database) instead of the built-in ones.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .codes import CloseCode, ErrorCode
from .errors import FrameError, Refused
from .protocol import validate_name

__all__ = [
    "AnonymousResolver",
    "ConnectRequest",
    "Identity",
    "IdentityResolver",
    "matches_any",
]


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """What a client presented when it connected.

    Attributes:
        username: the `username` query parameter, if any.
        room: the validated room id.
        token: the `token` query parameter or the `Authorization: Bearer` value, if any.
        headers: request headers, names in lower case.
        client: the peer's IP address, when the transport knows it.
        query: every query parameter.
    """

    username: str | None
    room: str
    token: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    client: str | None = None
    query: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a connection is and what it may do.

    Attributes:
        username: the member's name in the room.
        claims: token claims or application data, available to handlers.
        expires_at: UNIX time at which the connection must present a fresh token, or None.
        publish: topic patterns (`chat`, `chat.*`) the member may send; None allows every one.
    """

    username: str
    claims: dict[str, Any] = field(default_factory=dict)
    expires_at: float | None = None
    publish: tuple[str, ...] | None = None

    def may_publish(self, topic: str) -> bool:
        """Whether this identity may send frames of `topic`."""
        return self.publish is None or matches_any(topic, self.publish)


IdentityResolver = Callable[[ConnectRequest], Awaitable[Identity]]
"""An async callable that returns the identity of a request or raises `Refused`."""


def matches_any(value: str, patterns: tuple[str, ...] | list[str]) -> bool:
    """Whether `value` equals a pattern or matches one with `*` wildcards (`team-*`)."""
    for pattern in patterns:
        if pattern == value or ("*" in pattern and fnmatch.fnmatchcase(value, pattern)):
            return True
    return False


class AnonymousResolver:
    """Trusts the `username` parameter: for local development and trusted networks."""

    async def __call__(self, request: ConnectRequest) -> Identity:
        """The identity named by the `username` parameter.

        Raises:
            Refused: 4400 when the username is missing or invalid.
        """
        try:
            username = validate_name(request.username, "username")
        except FrameError as exc:
            raise Refused(CloseCode.BAD_REQUEST, ErrorCode.BAD_REQUEST, exc.message) from None
        return Identity(username=username)
