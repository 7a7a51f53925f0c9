"""The topic registry: topic -> the application's handlers, and the relay policy."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from .context import Context

__all__ = ["Handler", "TopicRegistry"]

Handler: TypeAlias = "Callable[[Context], Awaitable[Any]]"
"""An async function called with the :class:`~roomcast.Context` of one frame."""


class TopicRegistry:
    """Maps topics to handlers; a topic may have several, all called for each frame.

    Args:
        relay: relay frames of topics with no handler to the room: `True` for every topic,
            `False` for none, or a collection of the topics to relay.
    """

    def __init__(self, *, relay: bool | Collection[str] = True) -> None:
        self._handlers: dict[str, list[Handler]] = {}
        self._relay = relay if isinstance(relay, bool) else frozenset(relay)

    def add(self, topic: str, handler: Handler) -> None:
        """Register `handler` for `topic` (after those already registered)."""
        self._handlers.setdefault(topic, []).append(handler)

    def remove(self, topic: str, handler: Handler) -> None:
        """Unregister `handler` from `topic`.

        Raises:
            KeyError: when it was not registered for that topic.
        """
        handlers = self._handlers.get(topic, [])
        if handler not in handlers:
            raise KeyError(f"handler not registered for topic {topic!r}")
        handlers.remove(handler)
        if not handlers:
            del self._handlers[topic]

    def on(self, topic: str) -> Callable[[Handler], Handler]:
        """Decorator form of :meth:`add`: `@registry.on("chat")`."""

        def register(handler: Handler) -> Handler:
            self.add(topic, handler)
            return handler

        return register

    def handlers(self, topic: str) -> list[Handler]:
        """The handlers of `topic`, in registration order (empty when none)."""
        return self._handlers.get(topic, _NONE)

    def relays(self, topic: str) -> bool:
        """Whether a frame of `topic` with no handler is relayed to the room."""
        relay = self._relay
        return relay if isinstance(relay, bool) else topic in relay

    def set_relay(self, relay: bool | Collection[str]) -> None:
        """Change the relay policy (see the constructor)."""
        self._relay = relay if isinstance(relay, bool) else frozenset(relay)

    @property
    def topics(self) -> list[str]:
        """Topics that have at least one handler."""
        return list(self._handlers)


_NONE: list[Handler] = []
