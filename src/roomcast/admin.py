"""The operator's view: the admin page at `/admin`, its cluster stats and its live feed.

The page (static/admin.*) is built on the HTTP API (publish, kick, and
`GET /api/v1/admin/stats`, behind the API's own key check) plus one WebSocket,
`/api/v1/admin/feed`, that pushes the cluster view every `--stats-interval` seconds and, for
the room the operator watches, its members, its last messages and each new one (docs/admin.md).
"""

from __future__ import annotations

import asyncio
import contextlib
from importlib import resources
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from .api import api_key_valid, guard, json_error, json_response
from .auth import origin_allowed
from .codes import CloseCode, ErrorCode
from .errors import FrameError, RoomcastError
from .log import log_event
from .node import Node
from .protocol import validate_name
from .settings import is_loopback_host

__all__ = ["FEED_PATH", "admin_routes"]

FEED_PATH = "/api/v1/admin/feed"
AUTH_TIMEOUT = 10.0
"""Seconds a feed connection may take to send its key."""
TAIL_INTERVAL = 0.5
"""Seconds between two looks at the watched room (its new messages and members)."""
BACKLOG = 20
"""Last messages of a room sent when the operator starts watching it."""

_ASSETS = {
    "/admin": ("index.html", "text/html; charset=utf-8"),
    "/admin/admin.js": ("admin.js", "text/javascript; charset=utf-8"),
    "/admin/admin.css": ("admin.css", "text/css; charset=utf-8"),
}
_HEADERS = {
    # Every asset is served by roomcast itself; nothing else may load, frame or be framed.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def admin_routes(node: Node) -> list[BaseRoute]:
    """The page, its assets, `GET /api/v1/admin/stats` and the feed; none when the admin is
    off (`--admin`, or an API key, turns it on)."""
    if not node.settings.admin_enabled:
        return []
    static = resources.files("roomcast") / "static" / "admin"
    assets = {path: ((static / name).read_bytes(), kind) for path, (name, kind) in _ASSETS.items()}
    keyless = not node.settings.api_keys

    async def asset(request: Request) -> Response:
        if keyless and not _loopback_client(request):
            return json_error(
                ErrorCode.FORBIDDEN, "no API key is configured: the admin answers loopback only"
            )
        body, kind = assets[request.url.path.removeprefix(request.scope.get("root_path", ""))]
        return Response(body, 200, media_type=kind, headers=_HEADERS)

    async def stats(request: Request) -> Response:
        return json_response(await node.stats.cluster())

    feed = AdminFeed(node)
    return [
        *(Route(path, asset, methods=["GET"]) for path in assets),
        Route("/api/v1/admin/stats", guard(node, stats), methods=["GET"]),
        WebSocketRoute(FEED_PATH, feed.serve),
    ]


def _loopback_client(conn: Request | WebSocket) -> bool:
    return conn.client is not None and is_loopback_host(conn.client.host)


class AdminFeed:
    """The admin page's live feed: one WebSocket per open page.

    Frames are JSON `{"topic", "payload"}` as on `/api/v1/ws`. With an API key configured, the
    first frame must be `{"topic": "auth", "payload": {"key": KEY}}` (the key is not put in the
    URL, where proxies log it); without one, only loopback clients may connect. The server then
    sends `ready`, `stats` every `--stats-interval` seconds, and for the room named by
    `{"topic": "watch", "payload": {"roomID": R}}`: `room` (members, epoch, offset, its last
    messages) at once and when its members change, and `tail` with each new message.
    """

    def __init__(self, node: Node) -> None:
        self.node = node
        self.keys = [k.encode() for k in node.settings.api_keys]

    async def serve(self, ws: WebSocket) -> None:
        """Run one feed connection until either side closes it."""
        await ws.accept()
        refusal = self._refusal(ws)
        if refusal is None and self.keys:
            refusal = await self._authenticate(ws)
        if refusal is not None:
            close, code, message = refusal
            await _error(ws, code, message)
            await ws.close(close, message[:120])
            return
        log_event("admin.feed_opened", node_id=self.node.node_id)
        watch = _Watch()
        pushing = asyncio.get_running_loop().create_task(self._push(ws, watch))
        try:
            await _send(ws, {"topic": "ready", "payload": {"node": self.node.node_id}})
            await self._receive(ws, watch)
        except WebSocketDisconnect:
            pass
        finally:
            pushing.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pushing

    def _refusal(self, ws: WebSocket) -> tuple[int, ErrorCode, str] | None:
        """Why this connection may not have the feed before it says anything, or None."""
        headers = ws.headers
        if not origin_allowed(
            headers.get("origin"), headers.get("host"), self.node.settings.allowed_origins
        ):
            return CloseCode.POLICY_VIOLATION, ErrorCode.FORBIDDEN, "origin not allowed"
        if not self.keys and not _loopback_client(ws):
            return (
                CloseCode.FORBIDDEN,
                ErrorCode.FORBIDDEN,
                "no API key is configured: the admin answers loopback only",
            )
        return None

    async def _authenticate(self, ws: WebSocket) -> tuple[int, ErrorCode, str] | None:
        """Read the `auth` frame; None when it carries a configured key."""
        refused = (CloseCode.UNAUTHENTICATED, ErrorCode.UNAUTHENTICATED, "missing or wrong API key")
        try:
            raw = await asyncio.wait_for(ws.receive_text(), AUTH_TIMEOUT)
        except TimeoutError:
            return CloseCode.UNAUTHENTICATED, ErrorCode.UNAUTHENTICATED, "no auth frame in time"
        except (WebSocketDisconnect, KeyError, RuntimeError):
            return refused  # gone, or a binary frame
        try:
            frame = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return refused
        payload = frame.get("payload") if isinstance(frame, dict) else None
        key = payload.get("key") if isinstance(payload, dict) else None
        if frame.get("topic") != "auth" or not isinstance(key, str):
            return refused
        return None if api_key_valid(self.keys, key) else refused

    async def _receive(self, ws: WebSocket, watch: _Watch) -> None:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                await _error(ws, ErrorCode.INVALID_FRAME, "frames must be JSON text")
                continue
            try:
                frame = orjson.loads(text)
            except orjson.JSONDecodeError:
                await _error(ws, ErrorCode.INVALID_JSON, "frame is not valid JSON")
                continue
            if not isinstance(frame, dict) or not isinstance(frame.get("payload"), dict):
                await _error(ws, ErrorCode.INVALID_FRAME, "a frame is {topic, payload: {...}}")
                continue
            topic, payload = frame.get("topic"), frame["payload"]
            if topic == "auth":
                continue  # already authenticated (or no key is configured)
            if topic != "watch":
                await _error(ws, ErrorCode.UNKNOWN_TOPIC, f"unknown topic {topic!r}")
                continue
            room = payload.get("roomID")
            try:
                watch.room = None if room is None else validate_name(room, "roomID")
            except FrameError as exc:
                await _error(ws, ErrorCode.BAD_REQUEST, exc.message)
                continue
            watch.changed.set()

    async def _push(self, ws: WebSocket, watch: _Watch) -> None:
        """Send stats every interval and the watched room's news every half second."""
        loop = asyncio.get_running_loop()
        interval = self.node.settings.stats_interval or 1.0
        next_stats = loop.time()
        while True:
            if loop.time() >= next_stats:
                next_stats = loop.time() + interval
                await _send(ws, {"topic": "stats", "payload": await self.node.stats.cluster()})
            # A broker that cannot answer shows in the stats; the next look retries.
            with contextlib.suppress(RoomcastError):
                await self._tail(ws, watch)
            watch.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(watch.changed.wait(), min(TAIL_INTERVAL, interval))

    async def _tail(self, ws: WebSocket, watch: _Watch) -> None:
        room = watch.room
        if room is None:
            watch.seen = None
            return
        node = self.node
        fresh = watch.seen is None or watch.seen[0] != room
        if not fresh:
            assert watch.seen is not None
            _, epoch, offset = watch.seen
            page = await node.history(room, offset)
            fresh = page.epoch != epoch
        if fresh:
            page = await node.history(room)
        members = await node.broker.members(room)
        if watch.room != room:
            return  # the operator picked another room meanwhile
        publications = page.publications[-BACKLOG:] if fresh else page.publications
        messages = [orjson.loads(p.frame) for p in publications]
        if fresh or members != watch.members:
            watch.members = members
            room_payload: dict[str, Any] = {
                "roomID": room,
                "members": members,
                "epoch": page.epoch,
                "offset": page.offset,
            }
            if fresh:
                room_payload["messages"] = messages
            await _send(ws, {"topic": "room", "room": room, "payload": room_payload})
        if messages and not fresh:
            await _send(ws, {"topic": "tail", "room": room, "payload": {"messages": messages}})
        watch.seen = (room, page.epoch, page.offset)


class _Watch:
    """The room one feed connection watches, and how far it has been sent."""

    __slots__ = ("changed", "members", "room", "seen")

    def __init__(self) -> None:
        self.room: str | None = None
        self.seen: tuple[str, str, int] | None = None
        self.members: list[str] = []
        self.changed = asyncio.Event()


async def _send(ws: WebSocket, frame: dict[str, Any]) -> None:
    await ws.send_text(orjson.dumps(frame).decode())


async def _error(ws: WebSocket, code: ErrorCode, message: str) -> None:
    await _send(ws, {"topic": "error", "payload": {"code": code.value, "message": message}})
