"""The ASGI application: roomcast under `/rt`, Django for everything else.

Run: `uvicorn --app-dir examples django_app.asgi:application`.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application
from starlette.types import Receive, Scope, Send

from .realtime import rc

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_app.settings")
django_application = get_asgi_application()

PREFIX = "/rt"


async def application(scope: Scope, receive: Receive, send: Send) -> None:
    """Send the lifespan and `/rt/...` to roomcast, the rest to Django."""
    if scope["type"] == "lifespan":
        # Django does not take part in the lifespan; roomcast starts and stops its node here.
        await rc(scope, receive, send)
        return
    path: str = scope["path"]
    if path == PREFIX or path.startswith(PREFIX + "/"):
        # As Starlette's Mount does: the full path, and the prefix in root_path.
        await rc({**scope, "root_path": scope.get("root_path", "") + PREFIX}, receive, send)
        return
    await django_application(scope, receive, send)
