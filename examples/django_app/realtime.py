"""The roomcast node of the Django application, and who a WebSocket request is, from Django's
session."""

from __future__ import annotations

from http.cookies import CookieError, SimpleCookie
from importlib import import_module

from django.conf import settings

from roomcast import CloseCode, ConnectRequest, Context, ErrorCode, Identity, Refused, Roomcast
from roomcast.auth import matches_any

ROOMS: dict[str, tuple[str, ...]] = {"alice": ("lobby", "team-*"), "bob": ("lobby",)}
"""The rooms each user may enter (the application's own rules, e.g. a model, in a real app)."""


async def session_username(cookie_header: str | None) -> str | None:
    """The username that Django's session, named by the request's cookie, holds."""
    try:
        morsel = SimpleCookie(cookie_header or "").get(settings.SESSION_COOKIE_NAME)
    except CookieError:
        return None
    if morsel is None or not morsel.value:
        return None
    # The configured engine's store, as SessionMiddleware builds it; a bad or expired key
    # loads as an empty session.
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key=morsel.value)
    username = await store.aget("username")
    return username if isinstance(username, str) else None


async def resolve_identity(request: ConnectRequest) -> Identity:
    """Who the WebSocket request is: the user logged in to the Django session, else 4401;
    4403 for a room the user may not enter."""
    username = await session_username(request.headers.get("cookie"))
    if username is None:
        raise Refused(CloseCode.UNAUTHENTICATED, ErrorCode.UNAUTHENTICATED, "log in first")
    if request.username is not None and request.username != username:
        raise Refused(
            CloseCode.UNAUTHENTICATED,
            ErrorCode.UNAUTHENTICATED,
            "the username parameter disagrees with the session",
        )
    if not matches_any(request.room, ROOMS.get(username, ())):
        raise Refused(
            CloseCode.FORBIDDEN, ErrorCode.FORBIDDEN, f"{username} may not enter {request.room!r}"
        )
    return Identity(username=username, claims={"via": "django-session"})


rc = Roomcast(resolver=resolve_identity)


@rc.on("chat")
async def chat(ctx: Context) -> None:
    """Relay chat messages to the room, trimmed."""
    await ctx.broadcast("chat", {"text": str(ctx.payload.get("text", "")).strip()})
