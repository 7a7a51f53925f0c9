"""Brokers, chosen by URL: `memory://`, `redis://HOST:PORT/DB`, a comma-separated list of
such URLs (rooms spread over several servers), `redis+sentinel://HOST:PORT[,...]/MASTER/DB`
or `redis+cluster://HOST:PORT[,HOST:PORT...]` (a Redis Cluster).

:func:`from_url` is the one place a broker URL scheme is interpreted: the server, the
:class:`~roomcast.Publisher` and the settings validation all ask it (or :func:`check_url`);
urls.py takes the forms with several servers apart.
"""

from __future__ import annotations

from ..errors import ConfigError
from ..room_classes import RoomClasses
from .base import (
    Broker,
    BrokerListener,
    DeferredPublish,
    DuplicateMember,
    HistoryPage,
    ImmediatePublish,
    OutboxEntry,
    Publication,
    RoomFull,
    ShardedHealth,
    Signal,
    StatsStore,
    WebhookOutbox,
)
from .memory import MemoryBroker
from .urls import SENTINEL_SCHEMES, parse_sentinel, shard_urls

__all__ = [
    "Broker",
    "BrokerListener",
    "DeferredPublish",
    "DuplicateMember",
    "HistoryPage",
    "ImmediatePublish",
    "MemoryBroker",
    "OutboxEntry",
    "Publication",
    "RoomFull",
    "ShardedHealth",
    "Signal",
    "StatsStore",
    "WebhookOutbox",
    "check_url",
    "from_url",
    "is_shared",
]

_MEMORY = ("memory://",)
_REDIS = ("redis://", "rediss://")
_SHARDABLE = ("redis://", "rediss://")
"""The schemes a comma-separated list of servers is made of (rooms sharded over them)."""
_REDIS_CLUSTER = ("redis+cluster://",)
_SHARED = (*_REDIS, *SENTINEL_SCHEMES, *_REDIS_CLUSTER)
_FORMS = (
    "memory://, redis://HOST:PORT/DB, redis://H1:P1/DB,redis://H2:P2/DB,..., "
    "redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER_NAME/DB or "
    "redis+cluster://HOST:PORT[,HOST:PORT...]"
)


def check_url(url: str) -> None:
    """Check that `url` names a broker roomcast knows, in a form it can use.

    Raises:
        ConfigError: for any other scheme, naming the ones allowed; for a list of servers, a
            Sentinel URL or a Redis Cluster URL that is malformed, saying what is wrong.
    """
    if url.startswith(SENTINEL_SCHEMES):
        parse_sentinel(url)
    elif url.startswith(_REDIS_CLUSTER):
        from .redis.cluster import parse_cluster_url

        parse_cluster_url(url)
    elif _is_list(url):
        shard_urls(url)
    elif not url.startswith(_MEMORY + _REDIS):
        raise ConfigError(f"broker must be {_FORMS}, got {url!r}")


def _is_list(url: str) -> bool:
    """Whether `url` lists several plain Redis servers (`redis://A,redis://B,...`)."""
    return url.startswith(_SHARDABLE) and "," in url


def is_shared(url: str) -> bool:
    """Whether `url` names a broker that several processes share (Redis, in any form)."""
    return url.startswith(_SHARED)


def from_url(
    url: str,
    *,
    history_size: int = 100,
    history_ttl: float = 300.0,
    presence_ttl: float = 15.0,
    presence: bool = True,
    classes: RoomClasses | None = None,
) -> Broker:
    """The broker `url` names; the Redis client is imported only when used.

    Args:
        url: `memory://`, `redis://HOST:PORT/DB` (`rediss://` for TLS), several of those
            separated by commas, `redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER/DB`, or
            `redis+cluster://HOST:PORT[,HOST:PORT...]` (seed nodes of a Redis Cluster).
        history_size: messages retained per room.
        history_ttl: seconds retained messages live.
        presence_ttl: bound on how long a dead node's members stay listed (shared brokers).
        presence: False for a process that only publishes (holds no members, no lease).
        classes: the room classes, whose history settings apply per room (else
            `history_size` and `history_ttl` apply to every room).

    Raises:
        ConfigError: for a URL scheme roomcast does not know.
    """
    check_url(url)
    if url.startswith(_MEMORY):
        return MemoryBroker(history_size=history_size, history_ttl=history_ttl, classes=classes)
    if _is_list(url):
        from .sharded import ShardedBroker

        return ShardedBroker.from_urls(
            shard_urls(url),
            history_size=history_size,
            history_ttl=history_ttl,
            presence_ttl=presence_ttl,
            presence=presence,
            classes=classes,
        )
    from .redis import RedisBroker

    return RedisBroker(
        url,
        history_size=history_size,
        history_ttl=history_ttl,
        presence_ttl=presence_ttl,
        presence=presence,
        classes=classes,
        check_layout=True,
    )
