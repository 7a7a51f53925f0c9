"""The public facade: build a node and its ASGI app from settings, register handlers, send
commands, subscribe to events."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from importlib import resources
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Mount, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from .admin import admin_routes
from .api import api_routes, json_error
from .auth import IdentityResolver
from .brokers import Broker
from .codes import ErrorCode
from .commands import Command
from .errors import ConfigError
from .events import Event
from .node import Node
from .registry import Handler
from .room_classes import RoomClass
from .settings import Settings
from .transports.asgi import WebSocketEndpoint

__all__ = ["Roomcast"]

R = TypeVar("R")
E = TypeVar("E", bound=Event)


_WS_PATH = "/api/v1/ws"


def _route_path(scope: Scope) -> str:
    """The path below the app's mount point (`root_path`), as Starlette's routing sees it."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("", "/"):
        return path[len(root) :]
    return path


class Roomcast:
    """A roomcast node with its ASGI app.

    Mount it into FastAPI or Starlette (`app.mount("/rt", rc)` with
    `lifespan=rc.lifespan`), or run it alone (`roomcast serve`).

    Args:
        settings: the configuration; defaults to `Settings()` (memory broker, anonymous).
        broker: a broker instance to use instead of the one `settings.broker` names.
        resolver: an async callable resolving identities (see `roomcast.auth`).
        relay: relay topics with no handler to the room: True, False, or the topics to relay;
            defaults to `settings.relay`.
        demo: serve the demo chat page at `/`.
        room_classes: room classes by name (rooms `<class>:<rest>`, docs/configuration.md),
            added to (and over) those of `settings`.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        broker: Broker | None = None,
        resolver: IdentityResolver | None = None,
        relay: bool | Collection[str] | None = None,
        demo: bool = False,
        room_classes: Mapping[str, RoomClass] | None = None,
    ) -> None:
        self.settings = settings or Settings()
        if room_classes:
            self.settings = self.settings.replace(
                room_classes={**self.settings.room_classes, **room_classes}
            )
        self.node = Node(self.settings, broker=broker, resolver=resolver)
        self.start_error: ConfigError | None = None
        """Why the node's own lifespan could not start it (then it serves nothing)."""
        if relay is not None:
            self.node.registry.set_relay(relay)
        self._app = Starlette(
            routes=self._routes(demo),
            lifespan=self._own_lifespan,
            exception_handlers={
                HTTPException: _http_error,  # type: ignore[dict-item]
                Exception: _internal_error,
            },
        )

    def _routes(self, demo: bool) -> list[BaseRoute]:
        self._websocket = WebSocketEndpoint(self.node)
        routes: list[BaseRoute] = [
            WebSocketRoute(_WS_PATH, self._websocket),
            *api_routes(self.node),
            *admin_routes(self.node),
        ]
        if demo:
            static = resources.files("roomcast") / "static"
            routes.append(_DemoMount("/", StaticFiles(directory=str(static), html=True)))
        # Other WebSocket routes (the admin feed) go through Starlette's routing.
        self._routed_ws_paths = frozenset(
            route.path
            for route in routes
            if isinstance(route, WebSocketRoute) and route.path != _WS_PATH
        )
        return routes

    # the ASGI app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI interface: roomcast is itself an ASGI app."""
        if scope["type"] == "websocket":
            if _route_path(scope) == _WS_PATH:
                # Straight to the endpoint: Starlette's middleware and routing would hold a
                # coroutine frame each for the whole life of every connection.
                await self._websocket(scope, receive, send)
            elif _route_path(scope) in self._routed_ws_paths:
                await self._app(scope, receive, send)
            else:
                await _websocket_not_found(scope, receive, send)
            return
        await self._app(scope, receive, send)

    @property
    def asgi(self) -> ASGIApp:
        """The Starlette app behind this node."""
        return self._app

    @contextlib.asynccontextmanager
    async def _own_lifespan(self, app: Starlette) -> AsyncIterator[None]:
        try:
            await self.start()
        except ConfigError as exc:
            # Found only once the broker is reached (servers listed in another order than
            # the running nodes'): `roomcast serve` says so in one line and exits 2.
            self.start_error = exc
            yield
            return
        try:
            yield
        finally:
            await self.shutdown()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[None]:
        """Start the node and shut it down cleanly: pass it as the host app's `lifespan`."""
        await self.start()
        try:
            yield
        finally:
            await self.shutdown()

    async def start(self) -> None:
        """Connect the broker (done on first use otherwise)."""
        await self.node.start()

    async def shutdown(self) -> None:
        """Close every connection with 1012, leave presence and disconnect the broker."""
        await self.node.shutdown()

    # handlers, commands, events

    def on(self, topic: str) -> Callable[[Handler], Handler]:
        """Register a handler of `topic`: `@rc.on("chat") async def chat(ctx): ...`."""
        return self.node.registry.on(topic)

    def add_handler(self, topic: str, handler: Handler) -> None:
        """Register `handler` for `topic` (several per topic run concurrently)."""
        self.node.registry.add(topic, handler)

    async def send(self, command: Command[R]) -> R:
        """Send a command (`PublishToRoom`, `SendToMember`, `KickMember`) and return its result.

        Raises:
            MemberNotFound: the addressed member is connected nowhere.
            BrokerUnavailable: the broker cannot be reached (the command was not carried out).
            BrokerTimeout: the broker stopped answering after a publish was sent to it.
        """
        if not self.node.started:
            await self.node.start()
        return await self.node.commands.send(command)

    def subscribe(
        self, event_type: type[E], handler: Callable[[E], Awaitable[None]]
    ) -> Callable[[], None]:
        """Call `handler` for each event of `event_type`; returns an unsubscribe function."""
        return self.node.events.subscribe(event_type, handler)

    def on_event(
        self, event_type: type[E]
    ) -> Callable[[Callable[[E], Awaitable[None]]], Callable[[E], Awaitable[None]]]:
        """Decorator form of :meth:`subscribe`."""
        return self.node.events.on(event_type)


class _DemoMount(Mount):
    """The demo page's files at `/`, never matching `/api/` paths: a wrong method on an API
    route stays a 405 and an unknown API path a 404, instead of a file lookup. Nor does it
    serve the admin page's files, which only the admin routes serve (when it is on)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        path = _route_path(scope)
        if path.startswith("/api/") or path == "/admin" or path.startswith("/admin/"):
            return Match.NONE, {}
        return super().matches(scope)


async def _websocket_not_found(scope: Scope, receive: Receive, send: Send) -> None:
    """Refuse a WebSocket handshake on another path with HTTP 404 where the server offers the
    ASGI denial-response extension (uvicorn does); closing before `accept` would answer 403."""
    if "websocket.http.response" in scope.get("extensions", {}):
        message = f"no WebSocket endpoint here; connect to {_WS_PATH}"
        await json_error(ErrorCode.NOT_FOUND, message, 404)(scope, receive, send)
    else:
        await send({"type": "websocket.close", "code": 1000})


async def _http_error(request: Request, exc: HTTPException) -> Response:
    code = ErrorCode.NOT_FOUND if exc.status_code == 404 else ErrorCode.BAD_REQUEST
    return json_error(code, str(exc.detail), exc.status_code)


async def _internal_error(request: Request, exc: Exception) -> Response:
    # Starlette logs the exception after this answer: the client only learns it failed.
    return json_error(ErrorCode.INTERNAL, "internal error", 500)
