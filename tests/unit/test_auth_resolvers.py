"""`authorizes_rooms` answers what `isinstance(resolver, RoomAuthorizer)` does, cheaply."""

from __future__ import annotations

from typing import Any

import pytest

from roomcast.auth import AnonymousResolver, Identity, RoomAuthorizer, authorizes_rooms


class Authorizer:
    async def __call__(self, request: Any) -> Identity:
        return Identity("bob")

    async def authorize(self, identity: Identity, room: str) -> None:
        return None


class NotCallable:
    authorize = "yes"


class Cleared(Authorizer):
    authorize = None  # type: ignore[assignment]


async def plain(request: Any) -> Identity:
    return Identity("bob")


@pytest.mark.parametrize(
    "resolver", [Authorizer(), NotCallable(), Cleared(), plain, AnonymousResolver(), None]
)
def test_authorizes_rooms_is_the_protocol_check(resolver: object) -> None:
    assert authorizes_rooms(resolver) == isinstance(resolver, RoomAuthorizer)


def test_only_a_resolver_with_an_authorize_step_authorizes_rooms() -> None:
    assert authorizes_rooms(Authorizer())
    assert not authorizes_rooms(Cleared())
    assert not authorizes_rooms(plain)
