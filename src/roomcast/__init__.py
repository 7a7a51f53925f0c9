"""roomcast: room-based real-time messaging over WebSocket.

One process with everything in memory, or many processes sharing Redis; mount it into any ASGI
app or run `roomcast serve`.
"""

from .app import Roomcast
from .auth import AnonymousResolver, ConnectRequest, Identity, IdentityResolver
from .codes import CloseCode, ErrorCode
from .commands import Command, KickMember, PublishToRoom, SendToMember, SendWsMessage
from .context import Context
from .errors import (
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
from .settings import Settings

__version__ = "0.1.0"

__all__ = [
    "AnonymousResolver",
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
    "PublishToRoom",
    "Publisher",
    "Refused",
    "Roomcast",
    "RoomcastError",
    "SendToMember",
    "SendWsMessage",
    "Settings",
    "__version__",
]
