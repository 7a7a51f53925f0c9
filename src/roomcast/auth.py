"""Identity and room access: the resolver interface and the anonymous resolver.

A resolver turns a connection request into an :class:`Identity` or refuses it with
:class:`~roomcast.errors.Refused` (4401 unauthenticated, 4403 forbidden). Applications may pass
their own async callable (their session cookie, their database) instead of the built-in ones.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeGuard, runtime_checkable
from urllib.parse import urlsplit

from .codes import CloseCode, ErrorCode
from .errors import FrameError, Refused
from .protocol import validate_name

__all__ = [
    "PUBLISH_CLAIM",
    "ROOMS_CLAIM",
    "AnonymousResolver",
    "ConnectRequest",
    "Identity",
    "IdentityResolver",
    "RefreshingResolver",
    "RoomAuthorizer",
    "authorizes_rooms",
    "check_room_claim",
    "host_allowed",
    "identity_from_claims",
    "matches_any",
    "origin_allowed",
]

ROOMS_CLAIM = "rooms"
"""The claim listing the rooms a token grants: exact ids and `*` patterns (`team-*`)."""
PUBLISH_CLAIM = "publish"
"""The claim listing the topics a member may send (`chat`, `chat.*`); absent allows all."""


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """What a client presented when it connected.

    Attributes:
        username: the `username` query parameter, if any.
        room: the validated room id; None when the connection starts in no room (each
            `room.join` is then authorized on its own, see :class:`RoomAuthorizer`).
        token: the `token` query parameter or the `Authorization: Bearer` value, if any.
        headers: request headers, names in lower case.
        client: the peer's IP address, when the transport knows it.
        query: every query parameter.
    """

    username: str | None
    room: str | None
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


@runtime_checkable
class RoomAuthorizer(Protocol):
    """A resolver that can admit an identity to one more room by itself.

    A connection asks it at every `room.join`. A resolver without this step is asked again
    with a :class:`ConnectRequest` naming the new room (the connection's token, headers and
    query as they were at connect).
    """

    async def authorize(self, identity: Identity, room: str) -> None:
        """Return when `identity` may join `room`.

        Raises:
            Refused: `forbidden` when it may not.
        """


def authorizes_rooms(resolver: object) -> TypeGuard[RoomAuthorizer]:
    """Whether `resolver` is a :class:`RoomAuthorizer`: what `isinstance` answers for the
    protocol (it has an `authorize` that is not None), without the tens of microseconds a
    runtime protocol check costs, once per connection (a reconnect storm makes thousands)."""
    return getattr(resolver, "authorize", None) is not None


@runtime_checkable
class RefreshingResolver(Protocol):
    """A resolver that takes a fresh token in-band (`auth.refresh`)."""

    async def refresh(self, identity: Identity, rooms: Collection[str], payload: Any) -> Identity:
        """The identity a fresh token (in `payload`) gives a connection in `rooms`.

        Raises:
            Refused: 4401 for a refused token or another subject, 4403 for a room it no
                longer grants.
        """


def matches_any(value: str, patterns: Iterable[str]) -> bool:
    """Whether `value` equals a pattern or matches one where `*` stands for any characters.

    Only `*` is special (`team-*`, `*-public`, `*`); every other character matches itself.
    """
    for pattern in patterns:
        if pattern == value or ("*" in pattern and _wildcard(pattern).fullmatch(value)):
            return True
    return False


@functools.lru_cache(maxsize=1024)
def _wildcard(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def _string_list(claims: Mapping[str, Any], name: str) -> tuple[str, ...] | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Refused(
            CloseCode.UNAUTHENTICATED,
            ErrorCode.UNAUTHENTICATED,
            f"the {name!r} claim must be a list of strings",
        )
    return tuple(value)


def identity_from_claims(
    claims: dict[str, Any],
    username: str | None,
    room: str | None,
    *,
    expires_at: float | None = None,
) -> Identity:
    """The identity that verified token `claims` give in `room` (see docs/security.md).

    The username is the `sub` claim; `rooms`, when present, must grant `room`; `publish`,
    when present, restricts the topics the member may send.

    Args:
        claims: the verified claims.
        username: the `username` query parameter, if the client sent one.
        room: the room being joined; None checks no room (a connection in no room yet).
        expires_at: when the connection must present a fresh token (UNIX time).

    Raises:
        Refused: 4400 when `username` is not a valid username; 4401 when `sub` is missing or
            invalid, `username` disagrees with it, or a claim has the wrong type; 4403 when
            the token does not grant `room`.
    """
    if username is not None:
        # A malformed parameter is the request's fault (4400), whatever the token says.
        try:
            validate_name(username, "username")
        except FrameError as exc:
            raise Refused(CloseCode.BAD_REQUEST, ErrorCode.BAD_REQUEST, exc.message) from None
    try:
        subject = validate_name(claims.get("sub"), "sub claim")
    except FrameError as exc:
        raise Refused(CloseCode.UNAUTHENTICATED, ErrorCode.UNAUTHENTICATED, exc.message) from None
    if username is not None and username != subject:
        raise Refused(
            CloseCode.UNAUTHENTICATED,
            ErrorCode.UNAUTHENTICATED,
            "the username parameter disagrees with the token's subject",
        )
    _string_list(claims, ROOMS_CLAIM)  # a malformed claim is refused even without a room
    publish = _string_list(claims, PUBLISH_CLAIM)
    if room is not None:
        check_room_claim(claims, room)
    return Identity(username=subject, claims=claims, expires_at=expires_at, publish=publish)


def check_room_claim(claims: Mapping[str, Any], room: str) -> None:
    """Refuse `room` unless the `rooms` claim grants it; no `rooms` claim grants every room,
    as no `publish` claim allows every topic.

    Raises:
        Refused: 4403 `forbidden` when the claim does not grant `room`; 4401 when the claim
            is not a list of strings.
    """
    rooms = _string_list(claims, ROOMS_CLAIM)
    if rooms is not None and not matches_any(room, rooms):
        raise Refused(
            CloseCode.FORBIDDEN, ErrorCode.FORBIDDEN, f"the token does not grant room {room!r}"
        )


def host_allowed(host: str | None, allowed_hosts: Iterable[str] = ()) -> bool:
    """Whether a `Host` header names this server in a way no other web site can: an IP
    address, `localhost`, or one of `allowed_hosts` (`--allowed-hosts`; `*.example.com`
    patterns). A name an attacker controls may resolve to this server (DNS rebinding), so a
    request naming one is no proof that it comes from this server's own pages.
    """
    if not host:
        return False
    name = host.strip().lower()
    if name.startswith("["):
        name = name[1 : name.find("]")] if "]" in name else name
    elif name.count(":") == 1:
        name = name.rsplit(":", 1)[0]
    if name == "localhost":
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        patterns = [h.strip().lower() for h in allowed_hosts]
        return bool(patterns) and matches_any(name, patterns)
    return True


def origin_allowed(
    origin: str | None,
    host: str | None,
    allowed: Iterable[str],
    allowed_hosts: Iterable[str] = (),
) -> bool:
    """Whether a WebSocket request with this `Origin` header may connect.

    Requests without an `Origin` header (non-browser clients) are always allowed: the check
    exists to stop other web sites' pages from connecting with a visitor's cookies. With an
    empty `allowed`, only an origin naming the request's own `Host` is allowed, and only when
    that `Host` passes :func:`host_allowed`; otherwise only the listed origins
    (`https://app.example.com`, `https://*.example.com`, or `*` for any).

    Args:
        origin: the `Origin` header, if any.
        host: the `Host` header, if any.
        allowed: the configured origins (`--allowed-origins`).
        allowed_hosts: the configured host names (`--allowed-hosts`).
    """
    if origin is None:
        return True
    origin = origin.strip().lower().rstrip("/")
    patterns = [a.strip().lower().rstrip("/") for a in allowed]
    if patterns:
        return matches_any(origin, patterns)
    if not host or origin == "null" or not host_allowed(host, allowed_hosts):
        return False
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:
        return False
    return netloc == host.strip().lower()


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

    async def authorize(self, identity: Identity, room: str) -> None:
        """Every room is open to an anonymous connection."""
