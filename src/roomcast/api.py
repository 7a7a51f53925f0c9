"""The HTTP API: each route a thin call into the node's commands and queries."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote, unquote_to_bytes

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Scope

from .codes import ErrorCode
from .commands import KickMember, PublishToRoom, SendToMember
from .errors import BrokerUnavailable, FrameError, MemberNotFound, RoomcastError
from .log import log_event
from .node import Node
from .protocol import dumps, parse_offset, validate_name, validate_topic
from .settings import Settings

__all__ = ["api_key_valid", "api_routes", "guard", "json_error", "json_response", "log_api_policy"]

_STATUS = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.INVALID_JSON: 400,
    ErrorCode.INVALID_FRAME: 400,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.MEMBER_NOT_FOUND: 404,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.MESSAGE_TOO_BIG: 413,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.TIMEOUT: 504,
}

Endpoint = Callable[[Request], Awaitable[Response]]


def json_response(body: Any, status: int = 200) -> Response:
    """A JSON response encoded with orjson."""
    return Response(orjson.dumps(body), status, media_type="application/json")


def json_error(code: ErrorCode, message: str, status: int | None = None) -> Response:
    """`{"error": {"code", "message"}}` with the status that fits the code."""
    return json_response(
        {"error": {"code": code.value, "message": message}},
        status or _STATUS.get(code, 500),
    )


def api_key_valid(keys: list[bytes], given: str) -> bool:
    """Whether `given` is one of `keys`, compared with every key in constant time, so that
    the time taken says neither which key nearly matched nor how much of it."""
    given_b = given.strip().encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given_b, key)
    return matched


def _is_loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host in ("localhost", "testclient")


def log_api_policy(settings: Settings) -> None:
    """Log, at startup, who the HTTP API answers."""
    if settings.api_keys:
        log_event("api.keys", keys=len(settings.api_keys))
    else:
        log_event(
            "api.loopback_only",
            reason="no --api-key is configured: the HTTP API answers loopback clients only",
        )


def guard(node: Node, endpoint: Endpoint) -> Endpoint:
    """API key check, then error mapping: every failure becomes a JSON error."""
    keys = [k.encode() for k in node.settings.api_keys]

    async def guarded(request: Request) -> Response:
        if keys:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not api_key_valid(keys, given):
                return json_error(
                    ErrorCode.UNAUTHENTICATED,
                    "missing or wrong API key: send Authorization: Bearer <key>",
                )
        elif not _is_loopback(request):
            return json_error(
                ErrorCode.FORBIDDEN, "no API key is configured: the API answers loopback only"
            )
        try:
            return await endpoint(request)
        except FrameError as exc:
            return json_error(exc.code, exc.message)
        except (MemberNotFound, BrokerUnavailable) as exc:
            return json_error(exc.code, exc.message)
        except RoomcastError as exc:
            return json_error(exc.code, exc.message)

    return guarded


def _room(request: Request) -> str:
    return validate_name(unquote(request.path_params["room"]), "roomID")


class _NameRoute(Route):
    """A route whose path parameters may be any valid name, `/` included.

    Starlette matches the decoded path, where the room `a/b` (sent as `a%2Fb`) would be two
    segments. This route matches the raw path instead, each segment decoded on its own and
    only `%` and `/` escaped again; `_room` and the username take the escapes back out.
    """

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        escaped = _segment_escaped_path(scope)
        return super().matches(scope if escaped is None else {**scope, "path": escaped})


def _segment_escaped_path(scope: Scope) -> str | None:
    raw = scope.get("raw_path")
    if scope["type"] != "http" or not isinstance(raw, bytes):
        return None
    root = str(scope.get("root_path", ""))
    # raw_path still holds the mount prefix (root_path); skip as many segments as it has.
    segments = raw.split(b"?", 1)[0].split(b"/")[1 + root.count("/") :]
    names = (unquote_to_bytes(s).decode("utf-8", "replace") for s in segments)
    return root + "/" + "/".join(n.replace("%", "%25").replace("/", "%2F") for n in names)


async def _read_json(request: Request, max_size: int) -> Any:
    body = await request.body()
    if len(body) > max_size:
        raise FrameError(ErrorCode.MESSAGE_TOO_BIG, f"body larger than {max_size} bytes")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise FrameError(ErrorCode.INVALID_JSON, "body is not valid JSON") from None


def api_routes(node: Node) -> list[Route]:
    """The `/api/v1/rooms...` routes and `/healthz`, `/readyz`, `/metrics`."""

    async def publish(request: Request) -> Response:
        room = _room(request)
        body = await _read_json(request, node.settings.max_message_size)
        if not isinstance(body, dict):
            raise FrameError(ErrorCode.INVALID_FRAME, "body must be a JSON object")
        topic = validate_topic(body.get("topic"))
        payload = body.get("payload")
        if payload is None:
            raise FrameError(ErrorCode.INVALID_FRAME, "payload is required and must not be null")
        to = body.get("to")
        if to is None:
            offset = await node.commands.send(PublishToRoom(room, topic, payload))
        else:
            to = validate_name(to, "to")
            offset = await node.commands.send(SendToMember(room, to, topic, payload))
        log_event("api.published", room=room, topic=topic, to=to, offset=offset)
        return json_response({"offset": offset}, 202)

    async def rooms(request: Request) -> Response:
        listing = await node.broker.rooms()
        return json_response({"rooms": [{"roomID": r, "members": m} for r, m in listing.items()]})

    async def members(request: Request) -> Response:
        return json_response({"members": await node.broker.members(_room(request))})

    async def history(request: Request) -> Response:
        room = _room(request)
        # An empty value (`?since=&limit=`) means the parameter is not given.
        since = parse_offset(request.query_params.get("since") or None, "since")
        limit = parse_offset(request.query_params.get("limit") or None, "limit")
        page = await node.history(room, since, limit)
        frames = ",".join(p.frame for p in page.publications)
        body = f'{{"epoch":{dumps(page.epoch)},"offset":{page.offset},"messages":[{frames}]}}'
        return Response(body, 200, media_type="application/json")

    async def kick(request: Request) -> Response:
        room = _room(request)
        username = validate_name(unquote(request.path_params["username"]), "username")
        await node.commands.send(KickMember(room, username))
        log_event("api.kicked", room=room, username=username)
        return Response(status_code=204)

    async def healthz(request: Request) -> Response:
        return json_response({"status": "ok", "node": node.node_id})

    async def readyz(request: Request) -> Response:
        try:
            if not node.accepting:
                raise BrokerUnavailable("shutting down")
            await node.broker.ping()
        except BrokerUnavailable as exc:
            return json_response({"status": "unavailable", "reason": exc.message}, 503)
        return json_response({"status": "ready", "node": node.node_id})

    async def metrics(request: Request) -> Response:
        return Response(
            node.metrics.render(), 200, media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    def guarded(endpoint: Endpoint) -> Endpoint:
        return guard(node, endpoint)

    return [
        Route("/api/v1/rooms", guarded(rooms), methods=["GET"]),
        _NameRoute("/api/v1/rooms/{room}/messages", guarded(publish), methods=["POST"]),
        _NameRoute("/api/v1/rooms/{room}/members", guarded(members), methods=["GET"]),
        _NameRoute("/api/v1/rooms/{room}/history", guarded(history), methods=["GET"]),
        _NameRoute("/api/v1/rooms/{room}/members/{username}", guarded(kick), methods=["DELETE"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
