"""`redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER_NAME/DB`: the master found through Sentinel.

The broker is the same `RedisBroker`; only its connections differ. redis-py's
`SentinelConnectionPool` asks the Sentinels for the master's address each time it opens a
connection, and drops a connection that finds itself on a demoted master (`READONLY`). A
failover is then what a Redis restart already is to the broker: the connections fail, the node
is `unavailable` meanwhile, reconnects (to the promoted replica, once a Sentinel names it),
resubscribes, renews its lease and repairs every room from history (docs/architecture.md,
"Sentinel").
"""

from __future__ import annotations

from typing import Any

from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

from ..urls import parse_sentinel

__all__ = ["sentinel_pool"]


class _Pool(SentinelConnectionPool):
    """A Sentinel-backed pool whose close also closes its connections to the Sentinels."""

    async def disconnect(self, inuse_connections: bool = True) -> None:
        """Disconnect; the pool's own close (`inuse_connections`, not a change of master,
        which drops idle connections only) closes the Sentinel connections too."""
        await super().disconnect(inuse_connections)
        if inuse_connections:
            await self.sentinel_manager.aclose()


def sentinel_pool(url: str, **options: Any) -> SentinelConnectionPool:
    """A pool of connections to the master the Sentinels of `url` name; `options` as for
    `ConnectionPool` (timeouts, retry, size). The Sentinels are asked with the same timeouts.

    Raises:
        ConfigError: `url` is malformed.
    """
    parts = parse_sentinel(url)
    # Typed from redis-py 8.2 on; untyped before.
    sentinels = Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
        list(parts.sentinels),
        sentinel_kwargs={key: value for key, value in options.items() if key.startswith("socket_")},
    )
    return _Pool(  # type: ignore[no-untyped-call]
        parts.master,
        sentinels,
        db=parts.db,
        username=parts.username,
        password=parts.password,
        ssl=parts.tls,
        **options,
    )
