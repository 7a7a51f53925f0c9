"""The Django views: log in and out (the session the resolver reads), and a view sending a
roomcast command."""

from __future__ import annotations

import hmac
import json
import secrets

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET, require_POST

from roomcast import PublishToRoom

from .realtime import rc

PASSWORDS = {"alice": "wonderland", "bob": "builder"}
"""The application's users (django.contrib.auth's, in a real application)."""


def _body(request: HttpRequest) -> dict[str, str]:
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


# CSRF protection is left out to keep the example short: these views take JSON from scripts.
# A browser-facing application keeps CsrfViewMiddleware and sends the token with each POST.


@require_POST
async def login(request: HttpRequest) -> HttpResponse:
    """Check the password and put the username into a fresh session."""
    body = _body(request)
    username = str(body.get("username", ""))
    expected = PASSWORDS.get(username, secrets.token_hex(16))
    if not hmac.compare_digest(str(body.get("password", "")).encode(), expected.encode()):
        return JsonResponse({"error": "wrong username or password"}, status=401)
    await request.session.acycle_key()
    await request.session.aset("username", username)
    return HttpResponse(status=204)


@require_POST
async def logout(request: HttpRequest) -> HttpResponse:
    """End the session: its cookie no longer admits a WebSocket connection."""
    await request.session.aflush()
    return HttpResponse(status=204)


@require_GET
async def whoami(request: HttpRequest) -> HttpResponse:
    """The session's username (null when logged out)."""
    return JsonResponse({"username": await request.session.aget("username")})


@require_POST
async def announce(request: HttpRequest, room: str) -> HttpResponse:
    """Publish an announcement to `room` from a Django view; returns its offset."""
    username = await request.session.aget("username")
    if username is None:
        return JsonResponse({"error": "log in first"}, status=401)
    text = str(_body(request).get("text", ""))
    offset = await rc.send(PublishToRoom(room, "announcement", {"text": text, "by": username}))
    return JsonResponse({"offset": offset}, status=202)
