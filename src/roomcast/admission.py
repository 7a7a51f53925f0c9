"""Admitting a connection: origin, query, identity and limits, then its first room.

Transports call :func:`open_session` after the WebSocket upgrade. A refusal is one error frame
and a close code (docs/protocol.md, section 1); an admitted connection gets its welcome frame
and is handed back as a :class:`~roomcast.session.Session`.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl

from .auth import ConnectRequest, authorizes_rooms, origin_allowed
from .codes import CloseCode, ErrorCode
from .connection import Connection
from .errors import BrokerUnavailable, FrameError, Refused
from .log import log_event
from .node import Node
from .protocol import SERVER_SENDER, error_frame, parse_offset, validate_name, welcome_frame
from .session import Session

__all__ = ["ConnectQuery", "bearer_token", "open_session", "parse_connect_query"]


@dataclass(frozen=True, slots=True)
class ConnectQuery:
    """The validated room part of a connect URL."""

    room: str | None
    """The URL's `roomID`; None when the parameter is absent (a connection in no room)."""
    since: int | None = None
    epoch: str | None = None
    backlog: int | None = None


def parse_connect_query(query: Mapping[str, str]) -> ConnectQuery:
    """Validate `roomID`, `since`, `epoch` and `backlog` of a connect URL.

    Raises:
        Refused: 4400 `bad_request` for an empty or invalid `roomID`, a bad `since` or
            `backlog`, `since` without `epoch`, `since` with `backlog`, or either without
            `roomID`.
    """
    try:
        room = None if "roomID" not in query else validate_name(query["roomID"], "roomID")
        since = parse_offset(query.get("since"), "since")
        backlog = parse_offset(query.get("backlog"), "backlog")
    except FrameError as exc:
        raise _bad_request(exc.message) from None
    epoch = query.get("epoch") or None
    if since is not None and epoch is None:
        raise _bad_request("since needs epoch")
    if since is not None and backlog is not None:
        raise _bad_request("since and backlog cannot be used together")
    if room is None and (since is not None or backlog is not None):
        raise _bad_request("since and backlog need roomID")
    return ConnectQuery(room, since, epoch if since is not None else None, backlog)


def parse_query_string(raw: bytes) -> dict[str, str] | None:
    """The parameters of a connect URL's query string (the last of a repeated name wins);
    None when it is not UTF-8, percent-encoded or not (a name made of replacement
    characters would otherwise be taken for another one)."""
    try:
        return dict(parse_qsl(raw.decode(), keep_blank_values=True, errors="strict"))
    except UnicodeDecodeError:
        return None


def _bad_request(message: str) -> Refused:
    return Refused(CloseCode.BAD_REQUEST, ErrorCode.BAD_REQUEST, message)


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, if any."""
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


async def open_session(
    node: Node,
    connection: Connection,
    query: Mapping[str, str] | None,
    headers: Mapping[str, str],
    client: str | None = None,
) -> Session | None:
    """Admit the connection and join the room the request names (if it names one).

    On success the welcome frame (and, when resuming, the missed messages) are queued and the
    session is returned. On refusal one error frame and the close code are queued and None is
    returned. A `query` of None (see :func:`parse_query_string`) is refused with 4400.
    """
    connection_id = secrets.token_hex(8)
    try:
        if not origin_allowed(
            headers.get("origin"),
            headers.get("host"),
            node.settings.allowed_origins,
            node.settings.allowed_hosts,
        ):
            raise Refused(
                CloseCode.POLICY_VIOLATION,
                ErrorCode.FORBIDDEN,
                "origin not allowed (see --allowed-origins)",
            )
        if not node.accepting:
            raise Refused(CloseCode.SERVICE_RESTART, ErrorCode.UNAVAILABLE, "server shutting down")
        if not node.started:
            await node.start()
        if query is None:
            raise _bad_request("the query string is not valid UTF-8")
        wanted = parse_connect_query(query)
        request = ConnectRequest(
            username=query.get("username"),
            room=wanted.room,
            token=query.get("token") or bearer_token(headers),
            headers=headers,
            client=client,
            query=query,
        )
        identity = await node.resolver(request)
        if identity.username == SERVER_SENDER:
            # `from` would pass the member's messages off as the server's (HTTP API, commands).
            reserved = f"the username {SERVER_SENDER!r} is reserved for the server"
            if request.username == SERVER_SENDER:
                raise _bad_request(reserved)
            raise Refused(CloseCode.UNAUTHENTICATED, ErrorCode.UNAUTHENTICATED, reserved)
        lease = node.limits.acquire(client, identity.username)
        # A resolver without its own per-room step is asked again at every room.join, with
        # the request as it was: only then is the request kept.
        keep = None if authorizes_rooms(node.resolver) else request
        session = Session(node, connection, identity, connection_id, lease=lease, request=keep)
        try:
            if wanted.room is None:
                connection.send(
                    welcome_frame(
                        connection_id=connection_id, username=identity.username, room=None
                    )
                )
                session.log("connection.joined", node_id=node.node_id, rooms=0)
            else:
                await session.join_first(wanted.room, wanted.since, wanted.epoch, wanted.backlog)
        except BaseException:
            await session.leave("join_failed")
            raise
        session.watch_expiry()
        return session
    except Refused as exc:
        _refuse(node, connection, exc.close_code, exc.code, exc.message, connection_id, query)
    except BrokerUnavailable as exc:
        _refuse(
            node,
            connection,
            CloseCode.BROKER_UNAVAILABLE,
            ErrorCode.UNAVAILABLE,
            exc.message,
            connection_id,
            query,
        )
    except Exception:
        log_event(
            "connection.error", level=logging.ERROR, connection_id=connection_id, exc_info=True
        )
        _refuse(
            node,
            connection,
            CloseCode.INTERNAL_ERROR,
            ErrorCode.INTERNAL,
            "internal error",
            connection_id,
            query,
        )
    return None


def _refuse(
    node: Node,
    connection: Connection,
    close_code: CloseCode,
    code: ErrorCode,
    message: str,
    connection_id: str,
    query: Mapping[str, str] | None,
) -> None:
    query = query or {}
    node.metrics.errors.labels(code.value).inc()
    node.metrics.disconnects.labels(str(int(close_code))).inc()
    log_event(
        "connection.refused",
        level=logging.WARNING,
        connection_id=connection_id,
        room=_printable(query.get("roomID")),
        username=_printable(query.get("username")),
        close_code=int(close_code),
        code=code.value,
        reason=message,
    )
    connection.send(error_frame(code, message))
    connection.close(close_code, message[:120])


def _printable(value: str | None) -> str | None:
    """A request value safe to log: cut short, control characters escaped."""
    if value is None:
        return None
    return value[:64].encode("unicode_escape").decode("ascii")
