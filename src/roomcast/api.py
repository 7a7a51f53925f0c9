"""The HTTP API: each route a thin call into the node's commands and queries."""

from __future__ import annotations

import asyncio
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

from .auth import host_allowed
from .brokers import ShardedHealth
from .codes import ErrorCode
from .commands import KickMember
from .errors import BrokerUnavailable, FrameError, MemberNotFound, RoomcastError
from .log import log_event
from .node import Node
from .protocol import (
    dumps,
    is_builtin,
    loads,
    parse_offset,
    validate_key,
    validate_name,
    validate_topic,
)
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


class _HttpError(RoomcastError):
    """A refusal whose HTTP status is not the one its code maps to (408, 415)."""

    def __init__(self, status: int, code: ErrorCode, message: str) -> None:
        super().__init__(message, code=code)
        self.status = status


def json_response(body: Any, status: int = 200) -> Response:
    """A JSON response encoded with orjson."""
    return Response(orjson.dumps(body), status, media_type="application/json")


_EVERY_METHOD = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


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
        elif _from_another_site(request):
            # Any page in a browser on this machine could send it (no preflight for a simple
            # request): without a key, only programs and same-origin pages may call the API.
            return json_error(
                ErrorCode.FORBIDDEN,
                "no API key is configured: the API does not answer requests from other sites",
            )
        elif not host_allowed(request.headers.get("host"), node.settings.allowed_hosts) and (
            not _is_test_client(request)
        ):
            # A name that is not this machine's may be an attacker's rebound to it.
            return json_error(
                ErrorCode.FORBIDDEN,
                "no API key is configured: the API answers a Host of an IP address, "
                "localhost or --allowed-hosts only",
            )
        try:
            return await endpoint(request)
        except _HttpError as exc:
            return json_error(exc.code, exc.message, exc.status)
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
    # A segment that is not UTF-8 keeps its bytes as lone surrogates, which no valid name
    # holds: it is refused (400) rather than taken for a name of replacement characters.
    names = (unquote_to_bytes(s).decode("utf-8", "surrogateescape") for s in segments)
    return root + "/" + "/".join(n.replace("%", "%25").replace("/", "%2F") for n in names)


def _is_test_client(request: Request) -> bool:
    """Whether an in-process test client sent the request: Starlette's TestClient (client
    `testclient`) or httpx's ASGI transport with `http://testserver` (roomcast.testing). No
    browser is made to send the single-label `testserver` by a page on the web."""
    client = request.client.host if request.client else ""
    return client == "testclient" or request.headers.get("host") == "testserver"


def _from_another_site(request: Request) -> bool:
    """Whether a browser sent the request on behalf of a page of another origin. A page that
    roomcast served itself (the demo, the admin page) is same-origin and may call the API; a
    rebound name is stopped by the Host allow-list after this check."""
    headers = request.headers
    if headers.get("sec-fetch-site", "none") not in ("none", "same-origin"):
        return True
    origin = headers.get("origin")
    if origin is None:
        return False
    host = headers.get("host", "")
    return origin not in (f"http://{host}", f"https://{host}")


async def _read_json(request: Request, max_size: int, timeout: float) -> Any:
    """The request's JSON body: `application/json`, at most `max_size` bytes (refused from
    `Content-Length` before reading), all of it within `timeout` seconds."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise _HttpError(
            415, ErrorCode.BAD_REQUEST, "the body must be Content-Type: application/json"
        )
    too_big = FrameError(ErrorCode.MESSAGE_TOO_BIG, f"body larger than {max_size} bytes")
    length = request.headers.get("content-length", "")
    if length.isascii() and length.isdigit() and int(length) > max_size:
        raise too_big
    body = bytearray()
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                body += chunk
                if len(body) > max_size:
                    raise too_big
    except TimeoutError:
        raise _HttpError(
            408, ErrorCode.BAD_REQUEST, f"the body did not arrive within {timeout:g} seconds"
        ) from None
    except asyncio.CancelledError:
        # The server is stopping (uvicorn cancels what outlives the graceful shutdown).
        raise BrokerUnavailable("server shutting down") from None
    return loads(bytes(body), "body")


def api_routes(node: Node) -> list[Route]:
    """The `/api/v1/rooms...` routes and `/healthz`, `/readyz`, `/metrics`."""

    async def publish(request: Request) -> Response:
        room = _room(request)
        settings = node.settings
        body = await _read_json(request, settings.max_message_size, settings.handshake_timeout)
        if not isinstance(body, dict):
            raise FrameError(ErrorCode.INVALID_FRAME, "body must be a JSON object")
        topic = validate_topic(body.get("topic"))
        if is_builtin(topic):
            # Members would take it for the server's own answer (`room.history`, `presence`).
            raise FrameError(ErrorCode.INVALID_FRAME, f"topic {topic!r} is built-in: not published")
        payload = body.get("payload")
        if payload is None:
            raise FrameError(ErrorCode.INVALID_FRAME, "payload is required and must not be null")
        to = body.get("to")
        if to is not None:
            to = validate_name(to, "to")
        key = request.headers.get("idempotency-key")
        if key is not None:
            key = validate_key(key, "the Idempotency-Key header")
        publication = await node.publish(room, topic, payload, to=to, key=key)
        offset = publication.offset
        if publication.duplicate:
            log_event("api.duplicate", room=room, topic=topic, to=to, offset=offset)
            # The first one's status, with its offset (none when that one was a frame of an
            # ephemeral topic): the retry learns what it needs.
            answer: dict[str, Any] = {"offset": offset} if offset else {}
            return json_response({**answer, "duplicate": True}, 202)
        log_event("api.published", room=room, topic=topic, to=to, offset=offset)
        return json_response({"offset": offset}, 202)

    async def rooms(request: Request) -> Response:
        listing = await node.broker.rooms()
        classes = node.classes
        return json_response(
            {
                "rooms": [
                    {"roomID": r, "members": m}
                    for r, m in listing.items()
                    if classes.resolve(r).presence  # (rooms without presence are not listed)
                ]
            }
        )

    async def members(request: Request) -> Response:
        room = _room(request)
        if not node.classes.resolve(room).presence:
            return json_response({"members": []})
        return json_response({"members": await node.broker.members(room)})

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
        down: list[str] = []
        try:
            if not node.accepting:
                raise BrokerUnavailable("shutting down")
            if isinstance(node.broker, ShardedHealth):
                down = await node.broker.shards_down()
            else:
                await node.broker.ping()
        except BrokerUnavailable as exc:
            return json_response({"status": "unavailable", "reason": exc.message}, 503)
        if down:
            # Ready with some of several Redis servers down: only their rooms are refused.
            return json_response({"status": "degraded", "node": node.node_id, "down": down})
        return json_response({"status": "ready", "node": node.node_id})

    async def metrics(request: Request) -> Response:
        return Response(
            node.metrics.render(), 200, media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    def guarded(endpoint: Endpoint) -> Endpoint:
        return guard(node, endpoint)

    rooms_api = [
        Route("/api/v1/rooms", guarded(rooms), methods=["GET"]),
        _NameRoute("/api/v1/rooms/{room}/messages", guarded(publish), methods=["POST"]),
        _NameRoute("/api/v1/rooms/{room}/members", guarded(members), methods=["GET"]),
        _NameRoute("/api/v1/rooms/{room}/history", guarded(history), methods=["GET"]),
        _NameRoute("/api/v1/rooms/{room}/members/{username}", guarded(kick), methods=["DELETE"]),
    ]

    async def unmatched(request: Request) -> Response:
        """Any other `/api/v1/rooms...` call: checked like the others (the key first), then
        405 for a path of the API with another method, else 404."""
        allowed = [r for r in rooms_api if r.matches(request.scope)[0] is Match.PARTIAL]
        if allowed:
            answer = json_error(ErrorCode.BAD_REQUEST, "Method Not Allowed", 405)
            answer.headers["allow"] = ", ".join(
                sorted({m for r in allowed for m in r.methods or ()})
            )
            return answer
        return json_error(ErrorCode.NOT_FOUND, "Not Found", 404)

    return [
        *rooms_api,
        # Every /api/v1/rooms... call needs the key, a path of none of the routes above too.
        Route("/api/v1/rooms{rest:path}", guarded(unmatched), methods=list(_EVERY_METHOD)),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
