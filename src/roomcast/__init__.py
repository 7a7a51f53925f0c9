"""roomcast: room-based real-time messaging over WebSocket.

One process with everything in memory, or many processes sharing Redis; mount it into any ASGI
app or run `roomcast serve`.

The public names below are imported on first use, so that ``import roomcast.client`` (the Python
client) and ``roomcast connect`` load no server stack: no Starlette, uvicorn, Redis or
Prometheus client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import Roomcast
    from .auth import AnonymousResolver, ConnectRequest, Identity, IdentityResolver
    from .codes import CloseCode, ErrorCode
    from .commands import (
        Command,
        KickMember,
        PublishEphemeral,
        PublishToRoom,
        SendToMember,
        SendWsMessage,
    )
    from .context import Context
    from .errors import (
        BrokerTimeout,
        BrokerUnavailable,
        ConfigError,
        FrameError,
        HandlerError,
        MemberNotFound,
        Refused,
        RoomcastError,
    )
    from .events import Event, MemberJoined, MemberLeft, MessagePublished
    from .publisher import Publisher
    from .room_classes import RoomClass
    from .settings import Settings

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "AnonymousResolver": "auth",
    "BrokerTimeout": "errors",
    "BrokerUnavailable": "errors",
    "CloseCode": "codes",
    "Command": "commands",
    "ConfigError": "errors",
    "ConnectRequest": "auth",
    "Context": "context",
    "ErrorCode": "codes",
    "Event": "events",
    "FrameError": "errors",
    "HandlerError": "errors",
    "Identity": "auth",
    "IdentityResolver": "auth",
    "KickMember": "commands",
    "MemberJoined": "events",
    "MemberLeft": "events",
    "MemberNotFound": "errors",
    "MessagePublished": "events",
    "PublishEphemeral": "commands",
    "PublishToRoom": "commands",
    "Publisher": "publisher",
    "Refused": "errors",
    "RoomClass": "room_classes",
    "Roomcast": "app",
    "RoomcastError": "errors",
    "SendToMember": "commands",
    "SendWsMessage": "commands",
    "Settings": "settings",
}
"""Each public name and the submodule defining it."""

__all__ = [
    "AnonymousResolver",
    "BrokerTimeout",
    "BrokerUnavailable",
    "CloseCode",
    "Command",
    "ConfigError",
    "ConnectRequest",
    "Context",
    "ErrorCode",
    "Event",
    "FrameError",
    "HandlerError",
    "Identity",
    "IdentityResolver",
    "KickMember",
    "MemberJoined",
    "MemberLeft",
    "MemberNotFound",
    "MessagePublished",
    "PublishEphemeral",
    "PublishToRoom",
    "Publisher",
    "Refused",
    "RoomClass",
    "Roomcast",
    "RoomcastError",
    "SendToMember",
    "SendWsMessage",
    "Settings",
    "__version__",
]


def __getattr__(name: str) -> Any:
    """Import a public name from its submodule on first use (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
