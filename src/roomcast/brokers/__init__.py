"""Brokers, chosen by URL: `memory://` or `redis://HOST:PORT/DB`."""

from __future__ import annotations

from ..errors import ConfigError
from ..settings import Settings
from .base import Broker, BrokerListener, DuplicateMember, HistoryPage, Publication, Signal
from .memory import MemoryBroker

__all__ = [
    "Broker",
    "BrokerListener",
    "DuplicateMember",
    "HistoryPage",
    "MemoryBroker",
    "Publication",
    "Signal",
    "create_broker",
]


def create_broker(settings: Settings) -> Broker:
    """The broker `settings.broker` names; the Redis client is imported only when used.

    Raises:
        ConfigError: for a URL scheme roomcast does not know.
    """
    url = settings.broker
    if url.startswith("memory://"):
        return MemoryBroker(history_size=settings.history_size, history_ttl=settings.history_ttl)
    if url.startswith(("redis://", "rediss://")):
        from .redis import RedisBroker

        return RedisBroker(
            url,
            history_size=settings.history_size,
            history_ttl=settings.history_ttl,
            presence_ttl=settings.presence_ttl,
        )
    raise ConfigError(f"unknown broker URL {url!r}: use memory:// or redis://HOST:PORT/DB")
