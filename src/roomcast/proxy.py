"""The backend proxy: the server asks an HTTP backend before it admits a connection, a room
join or a client frame (protocol section 11, docs/webhooks.md).

One :class:`Proxy` per node holds one pooled keep-alive HTTP client, so a proxied connect
costs one request, not a new TCP connection. Every call is bounded by `--proxy-timeout` and
runs inside the one connection (or frame) it is about: a slow backend delays that one and no
other. The connect answer's identity and grants are applied exactly like a token's claims
(`auth.identity_from_claims`), by :class:`ProxyResolver`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar

import httpx
import orjson

from .auth import (
    PUBLISH_CLAIM,
    ROOMS_CLAIM,
    ConnectRequest,
    Identity,
    check_room_claim,
    identity_from_claims,
)
from .codes import CloseCode, ErrorCode
from .errors import FrameError, Refused
from .metrics import Metrics
from .protocol import validate_name
from .settings import Settings

__all__ = ["FORWARDED_HEADERS", "POOL_SIZE", "Proxy", "ProxyResolver"]

FORWARDED_HEADERS = ("cookie", "authorization", "origin", "user-agent")
"""The request headers a connect call passes on (no others)."""
POOL_SIZE = 256
"""Backend requests of one node under way at once (kept-alive connections are reused)."""

Kind = Literal["connect", "join", "publish"]
T = TypeVar("T")


def _unavailable(message: str) -> Refused:
    return Refused(CloseCode.BROKER_UNAVAILABLE, ErrorCode.UNAVAILABLE, message)


class Proxy:
    """The proxy calls of one node.

    Args:
        settings: `proxy_connect_url`, `proxy_join_url`, `proxy_publish_url`, `proxy_timeout`.
        metrics: the node's metrics (calls by result, latency).
    """

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.connect_url = settings.proxy_connect_url
        self.join_url = settings.proxy_join_url
        self.publish_url = settings.proxy_publish_url
        self.timeout = settings.proxy_timeout
        self.metrics = metrics
        self._client = httpx.AsyncClient(
            timeout=settings.proxy_timeout,
            limits=httpx.Limits(max_connections=POOL_SIZE, max_keepalive_connections=POOL_SIZE),
        )

    async def close(self) -> None:
        """Close the kept-alive connections."""
        await self._client.aclose()

    async def _call(
        self,
        kind: Kind,
        url: str,
        body: Mapping[str, Any],
        parse: Callable[[dict[str, Any]], T],
    ) -> T:
        """POST `body`, and `parse` the answer's JSON object.

        Raises:
            Refused: 401 `unauthenticated` (4401), 403 `forbidden` (4403), anything else (no
                answer in time, another status, a body that is not a JSON object or that
                `parse` refuses) `unavailable` (4503).
        """
        started = time.monotonic()
        try:
            answer = parse(await self._ask(kind, url, body))
        except Refused as exc:
            self.metrics.proxy_calls.labels(kind, str(exc.code)).inc()
            raise
        finally:
            self.metrics.proxy_seconds.labels(kind).observe(time.monotonic() - started)
        self.metrics.proxy_calls.labels(kind, "allowed").inc()
        return answer

    async def _ask(self, kind: Kind, url: str, body: Mapping[str, Any]) -> dict[str, Any]:
        try:
            # httpx's timeout bounds each read, not the whole answer: a backend that trickles
            # its answer a byte at a time is held to the total here.
            async with asyncio.timeout(self.timeout):
                response = await self._client.post(
                    url, content=orjson.dumps(body), headers={"content-type": "application/json"}
                )
        except (httpx.TimeoutException, TimeoutError):
            raise _unavailable(
                f"the {kind} backend did not answer within {self.timeout:g} s"
            ) from None
        except httpx.HTTPError as exc:
            raise _unavailable(
                f"the {kind} backend cannot be reached ({type(exc).__name__})"
            ) from None
        status = response.status_code
        if status == 401:
            raise Refused(
                CloseCode.UNAUTHENTICATED,
                ErrorCode.UNAUTHENTICATED,
                f"the backend refused the {kind}",
            )
        if status == 403:
            raise Refused(
                CloseCode.FORBIDDEN, ErrorCode.FORBIDDEN, f"the backend refused the {kind}"
            )
        if status != 200:
            raise _unavailable(f"the {kind} backend answered {status}")
        try:
            answer = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise _unavailable(f"the {kind} backend answered 200 without JSON") from None
        if not isinstance(answer, dict):
            raise _unavailable(f"the {kind} backend answered 200 without a JSON object")
        return answer

    async def connect(self, request: ConnectRequest) -> Identity:
        """Ask the connect backend; its answer's `username`, `rooms` and `publish` are the
        identity and the grants (the query's `username` when it names none).

        Raises:
            Refused: as `_call`; 4403 when `rooms` does not grant the URL's room; 4400 when
                neither the backend nor the query names a username; 4401 when both do and
                they disagree (as for a token's subject).
        """
        headers = request.headers
        body = {
            "username": request.username,
            "roomID": request.room,
            "token": request.token,
            "headers": {h: headers[h] for h in FORWARDED_HEADERS if h in headers},
            "client": request.client,
        }
        url = self.connect_url
        if url is None:
            raise _unavailable("no connect backend is configured")
        claims = await self._call("connect", url, body, _connect_claims)
        if "sub" not in claims:
            try:
                claims["sub"] = validate_name(request.username, "username")
            except FrameError as exc:
                raise Refused(CloseCode.BAD_REQUEST, ErrorCode.BAD_REQUEST, exc.message) from None
        elif request.username is not None and request.username != claims["sub"]:
            # As a token's subject: a query that names someone else is refused.
            raise Refused(
                CloseCode.UNAUTHENTICATED,
                ErrorCode.UNAUTHENTICATED,
                "the username parameter disagrees with the backend's answer",
            )
        return identity_from_claims(claims, None, request.room)

    async def join(self, username: str, room: str, connection_id: str) -> None:
        """Ask the join backend whether `username` may join `room` (nothing to ask without
        one).

        Raises:
            Refused: as `_call`.
        """
        if self.join_url is not None:
            body = {"username": username, "roomID": room, "connectionId": connection_id}
            await self._call("join", self.join_url, body, _ignore)

    async def publish(
        self, username: str, room: str, topic: str, payload: Any, connection_id: str
    ) -> Any:
        """Ask the publish backend about a client frame; the payload to publish (the
        backend's `payload` when it rewrote it).

        Raises:
            Refused: as `_call`; `unavailable` for a `payload` of null.
        """
        if self.publish_url is None:
            return payload
        body = {
            "username": username,
            "roomID": room,
            "topic": topic,
            "payload": payload,
            "connectionId": connection_id,
        }
        rewritten = await self._call("publish", self.publish_url, body, _rewrite)
        return payload if rewritten is _KEEP else rewritten


_KEEP = object()


def _ignore(answer: dict[str, Any]) -> None:
    return None


def _rewrite(answer: dict[str, Any]) -> Any:
    if "payload" not in answer:
        return _KEEP
    if answer["payload"] is None:
        raise _unavailable("the publish backend rewrote the payload to null")
    return answer["payload"]


def _connect_claims(answer: dict[str, Any]) -> dict[str, Any]:
    """The claims a connect answer gives (`sub` from `username`), its types checked."""
    claims: dict[str, Any] = {}
    if "username" in answer:
        try:
            claims["sub"] = validate_name(answer["username"], "username")
        except FrameError as exc:
            raise _unavailable(
                f"the connect backend answered a bad username: {exc.message}"
            ) from None
    for name in (ROOMS_CLAIM, PUBLISH_CLAIM):
        if name in answer:
            value = answer[name]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise _unavailable(
                    f"the connect backend answered {name!r} that is not a list of strings"
                )
            claims[name] = value
    return claims


class ProxyResolver:
    """The identity resolver of a node with `--proxy-connect-url`: the backend's connect
    answer is the identity, its `rooms` grant the rooms a later `room.join` may name.

    Args:
        proxy: the node's proxy.
    """

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    async def __call__(self, request: ConnectRequest) -> Identity:
        """The identity the connect backend gives `request`.

        Raises:
            Refused: see :meth:`Proxy.connect`.
        """
        return await self.proxy.connect(request)

    async def authorize(self, identity: Identity, room: str) -> None:
        """Refuse a room the connect answer's `rooms` does not grant.

        Raises:
            Refused: `forbidden`.
        """
        check_room_claim(identity.claims, room)
