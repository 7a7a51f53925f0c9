"""JWT identity resolver (see docs/security.md)."""

from __future__ import annotations

from .auth import ConnectRequest, Identity
from .errors import ConfigError
from .settings import Settings

__all__ = ["JwtResolver"]


class JwtResolver:
    """Resolves identities from JWTs."""

    @classmethod
    def from_settings(cls, settings: Settings) -> JwtResolver:
        """Build the resolver the settings describe."""
        raise ConfigError("JWT authentication is not available in this build")

    async def __call__(self, request: ConnectRequest) -> Identity:
        """Resolve `request`."""
        raise NotImplementedError
