"""The topic registry: handlers per topic and the relay policy."""

from __future__ import annotations

from typing import Any

import pytest

from roomcast.registry import TopicRegistry


async def first(ctx: Any) -> None:
    """A handler."""


async def second(ctx: Any) -> None:
    """Another handler."""


def test_handlers_in_registration_order() -> None:
    """A topic keeps every handler, in the order registered; other topics have none."""
    registry = TopicRegistry()
    registry.add("chat", first)

    @registry.on("chat")
    async def third(ctx: Any) -> None:
        """Registered by decorator."""

    registry.add("chat", second)
    assert registry.handlers("chat") == [first, third, second]
    assert registry.handlers("other") == []
    assert registry.topics == ["chat"]


def test_remove() -> None:
    """Removing the last handler forgets the topic; removing an unknown one is a KeyError."""
    registry = TopicRegistry()
    registry.add("chat", first)
    registry.add("chat", second)
    registry.remove("chat", first)
    assert registry.handlers("chat") == [second]
    registry.remove("chat", second)
    assert registry.topics == []
    with pytest.raises(KeyError):
        registry.remove("chat", second)


def test_handlers_list_is_not_shared_when_empty() -> None:
    """The empty list returned for an unknown topic does not collect registrations."""
    registry = TopicRegistry()
    registry.handlers("a")
    registry.add("b", first)
    assert registry.handlers("a") == []
    assert TopicRegistry().handlers("b") == []


@pytest.mark.parametrize(
    ("relay", "relayed", "not_relayed"),
    [(True, ["chat", "x"], []), (False, [], ["chat", "x"]), (["chat"], ["chat"], ["x"])],
)
def test_relay_policy(relay: Any, relayed: list[str], not_relayed: list[str]) -> None:
    """relay=True relays every topic, False none, a collection only those topics."""
    registry = TopicRegistry(relay=relay)
    assert all(registry.relays(t) for t in relayed)
    assert not any(registry.relays(t) for t in not_relayed)


def test_set_relay() -> None:
    """The relay policy can be changed after construction."""
    registry = TopicRegistry()
    registry.set_relay({"a"})
    assert registry.relays("a")
    assert not registry.relays("b")
    registry.set_relay(False)
    assert not registry.relays("a")
