"""roomcast inside a FastAPI app that authenticates members its own way.

The application already knows its users: here a login route sets a session cookie, and a
dict stands in for the application's database. Instead of JWTs, roomcast asks the
application's own async resolver who a WebSocket request is and what it may do:

- no session cookie, or an unknown one: refused with 4401;
- a room the user may not enter: refused with 4403;
- `publish` restricts the topics a member may send (others get `forbidden` error frames).

Because the browser sends the session cookie with the WebSocket request, the origin check
matters here: roomcast's default lets only pages from this same host connect (see
docs/security.md, "Origins").

Run it:

    uvicorn --app-dir examples fastapi_custom_auth:app

then `POST /login {"username": "alice", "password": "wonderland"}` and connect to
`ws://127.0.0.1:8000/rt/api/v1/ws?roomID=lobby` with the `sid` cookie it set.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie

from fastapi import FastAPI, HTTPException, Response
from pydantic import BaseModel

from roomcast import CloseCode, ConnectRequest, ErrorCode, Identity, Refused, Roomcast, Settings
from roomcast.auth import matches_any


@dataclass(frozen=True)
class User:
    """One of the application's users."""

    password: str
    rooms: tuple[str, ...]
    publish: tuple[str, ...] | None = None


USERS: dict[str, User] = {
    "alice": User("wonderland", rooms=("lobby", "team-*")),
    "bob": User("builder", rooms=("lobby",), publish=("chat",)),
}
"""The application's users (its database, in a real application)."""

SESSIONS: dict[str, str] = {}
"""Session id -> username, as the application's session store would keep them."""


def _session_user(cookie_header: str | None) -> str | None:
    if not cookie_header:
        return None
    try:
        cookie = SimpleCookie(cookie_header)
    except CookieError:
        return None
    morsel = cookie.get("sid")
    return SESSIONS.get(morsel.value) if morsel is not None else None


async def resolve_identity(request: ConnectRequest) -> Identity:
    """Who the WebSocket request is, from the application's session cookie."""
    username = _session_user(request.headers.get("cookie"))
    if username is None:
        raise Refused(CloseCode.UNAUTHENTICATED, ErrorCode.UNAUTHENTICATED, "log in first")
    if request.username is not None and request.username != username:
        raise Refused(
            CloseCode.UNAUTHENTICATED,
            ErrorCode.UNAUTHENTICATED,
            "the username parameter disagrees with the session",
        )
    user = USERS[username]
    # `room` is None for a connection that starts in no room; roomcast asks again, with the
    # room set, for every room.join on the connection.
    if request.room is not None and not matches_any(request.room, user.rooms):
        raise Refused(
            CloseCode.FORBIDDEN,
            ErrorCode.FORBIDDEN,
            f"{username} may not enter room {request.room!r}",
        )
    return Identity(username=username, claims={"via": "session"}, publish=user.publish)


rc = Roomcast(Settings(), resolver=resolve_identity)
app = FastAPI(lifespan=rc.lifespan)


class Login(BaseModel):
    """The login form."""

    username: str
    password: str


@app.post("/login", status_code=204)
async def login(form: Login, response: Response) -> None:
    """Check the password and set the `sid` session cookie."""
    user = USERS.get(form.username)
    expected = user.password if user is not None else secrets.token_hex(16)
    if not hmac.compare_digest(form.password.encode(), expected.encode()) or user is None:
        raise HTTPException(401, "wrong username or password")
    sid = secrets.token_urlsafe(24)
    SESSIONS[sid] = form.username
    response.set_cookie("sid", sid, httponly=True, samesite="strict")


app.mount("/rt", rc)

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=8000)
