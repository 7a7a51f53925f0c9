"""Former home of :class:`WebSocketProtocol`; kept so that existing imports keep working.

Import from :mod:`roomcast.transports.uvicorn` instead.
"""

from __future__ import annotations

from .uvicorn import CLOSE_TIMEOUT, DIRECT_EXTENSION, KEEPALIVE_REASON, WebSocketProtocol

__all__ = ["CLOSE_TIMEOUT", "DIRECT_EXTENSION", "KEEPALIVE_REASON", "WebSocketProtocol"]
