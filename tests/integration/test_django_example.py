"""examples/django_app under uvicorn: roomcast mounted in a Django ASGI application,
connections authenticated from Django's session."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.harness import Client, uvicorn_app


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    """`uvicorn --app-dir examples django_app.asgi:application` on a free port."""
    with uvicorn_app("django_app.asgi:application", "examples") as (url, _log):
        yield url


def ws_url(site: str) -> str:
    return site.replace("http://", "ws://") + "/rt/api/v1/ws"


async def login(http: httpx.AsyncClient, username: str, password: str) -> str:
    """Log in through the Django view; the Cookie header of the session it starts."""
    response = await http.post("/login", json={"username": username, "password": password})
    assert response.status_code == 204, response.text
    return f"sessionid={response.cookies['sessionid']}"


async def test_session_user_joins_and_django_views_send_commands(site: str) -> None:
    """A user logged in through Django joins as the session's user; a Django view's command
    reaches the member; Django answers its own routes beside roomcast's."""
    async with httpx.AsyncClient(base_url=site, timeout=5) as http:
        cookie = await login(http, "alice", "wonderland")
        assert (await http.get("/whoami")).json() == {"username": "alice"}
        alice = await Client.connect(ws_url(site), room="lobby", headers={"Cookie": cookie})
        welcome = await alice.join()
        assert welcome["payload"]["username"] == "alice"
        await alice.send({"topic": "chat", "payload": {"text": "  hi  "}})
        frame = await alice.recv_topic("chat")
        assert (frame["payload"], frame["from"]) == ({"text": "hi"}, "alice")
        answer = await http.post("/rooms/lobby/announce", json={"text": "tea"})
        assert answer.status_code == 202
        announcement = await alice.recv_topic("announcement")
        assert announcement["payload"] == {"text": "tea", "by": "alice"}
        assert announcement["offset"] == answer.json()["offset"]
        members = await http.get("/rt/api/v1/rooms/lobby/members")
        assert members.json() == {"members": ["alice"]}
        await alice.close()


async def test_connections_without_a_valid_session_are_refused(site: str) -> None:
    """No session cookie, a forged one, or the cookie logout leaves gives 4401; a room the
    user may not enter 4403; another username than the session's 4401."""
    url = ws_url(site)
    async with httpx.AsyncClient(base_url=site, timeout=5) as http:
        bob = await login(http, "bob", "builder")
        cases = [
            ({}, "lobby", None, 4401),
            ({"Cookie": "sessionid=forged-value"}, "lobby", None, 4401),
            ({"Cookie": bob}, "team-red", None, 4403),
            ({"Cookie": bob}, "lobby", "alice", 4401),
        ]
        assert (await http.post("/logout")).status_code == 204
        ended = http.cookies.get("sessionid") or ""
        cases.append(({"Cookie": f"sessionid={ended}"}, "lobby", None, 4401))
        for headers, room, username, code in cases:
            client = await Client.connect(url, username, room, headers=headers)
            closed, frames = await client.closed()
            assert closed == code, (headers, room, username)
            assert frames[0]["topic"] == "error"


def test_wrong_password_is_refused_by_django(site: str) -> None:
    """The Django login view answers a wrong password with 401 and starts no session."""
    with httpx.Client(base_url=site, timeout=5) as http:
        response = http.post("/login", json={"username": "alice", "password": "nope"})
        assert response.status_code == 401
        assert "sessionid" not in response.cookies
