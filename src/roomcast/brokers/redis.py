"""The Redis broker (see docs/architecture.md)."""

from __future__ import annotations

from ..errors import ConfigError

__all__ = ["RedisBroker"]


class RedisBroker:
    """Cross-node delivery, presence and history in Redis."""

    def __init__(self, url: str, *, history_size: int, history_ttl: float,
                 presence_ttl: float) -> None:
        raise ConfigError("the redis:// broker is not available in this build")
