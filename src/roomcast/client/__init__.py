"""The Python client of roomcast: asyncio, typed, reconnecting and resuming on its own.

::

    from roomcast.client import Client

    async with Client("ws://127.0.0.1:8000", username="alice", room="r1") as client:
        await client.send("chat", {"text": "hello"})
        news = await client.join("news", backlog=20)  # another room, same connection (v1.1)
        news.on("headline")(print)
        async for frame in client:
            print(frame.sender, frame.payload)

:class:`HttpApi` calls the HTTP API (publish, rooms, members, history, kick) with the standard
library only. See docs/clients.md.
"""

from ._client import (
    Client,
    CloseInfo,
    FrameHandler,
    RecoveryCallback,
    StateCallback,
    TokenProvider,
)
from ._errors import (
    ApiError,
    ClientClosed,
    ClientError,
    ConnectionLost,
    RequestError,
    RequestTimeout,
)
from ._frames import Frame, HistoryPage, Welcome
from ._http import HttpApi
from ._policy import Backoff, ClientState, Reconnect, reconnect_rule
from ._room import Room

__all__ = [
    "ApiError",
    "Backoff",
    "Client",
    "ClientClosed",
    "ClientError",
    "ClientState",
    "CloseInfo",
    "ConnectionLost",
    "Frame",
    "FrameHandler",
    "HistoryPage",
    "HttpApi",
    "Reconnect",
    "RecoveryCallback",
    "RequestError",
    "RequestTimeout",
    "Room",
    "StateCallback",
    "TokenProvider",
    "Welcome",
    "reconnect_rule",
]
