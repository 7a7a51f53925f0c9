"""An application's own resolver (examples/fastapi_custom_auth.py) decides who connects."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.harness import Client, uvicorn_app


@pytest.fixture(scope="module")
def example_url() -> Iterator[str]:
    """The FastAPI example served by uvicorn as a real process."""
    with uvicorn_app("fastapi_custom_auth:app", "examples") as (url, _log):
        yield url


def session_cookie(url: str, username: str, password: str) -> str:
    with httpx.Client(base_url=url, timeout=5) as http:
        response = http.post("/login", json={"username": username, "password": password})
        assert response.status_code == 204, response.text
        return f"sid={response.cookies['sid']}"


async def test_session_cookie_identifies_member(example_url: str) -> None:
    """A logged-in user joins as their session's user; the username parameter is not needed."""
    ws_url = example_url.replace("http://", "ws://") + "/rt/api/v1/ws"
    cookie = session_cookie(example_url, "alice", "wonderland")
    client = await Client.connect(ws_url, room="team-red", headers={"Cookie": cookie})
    welcome = await client.join()
    assert welcome["payload"]["username"] == "alice"
    await client.close()


async def test_custom_resolver_refusals(example_url: str) -> None:
    """No session gives 4401, another username 4401, a room not granted 4403, and a topic
    outside the user's `publish` a forbidden error frame."""
    ws_url = example_url.replace("http://", "ws://") + "/rt/api/v1/ws"
    anonymous = await Client.connect(ws_url, "alice", "lobby")
    assert (await anonymous.closed())[0] == 4401
    bob = session_cookie(example_url, "bob", "builder")
    impostor = await Client.connect(ws_url, "alice", "lobby", headers={"Cookie": bob})
    assert (await impostor.closed())[0] == 4401
    outsider = await Client.connect(ws_url, room="team-red", headers={"Cookie": bob})
    code, frames = await outsider.closed()
    assert code == 4403
    assert frames[0]["payload"]["code"] == "forbidden"

    member = await Client.connect(ws_url, room="lobby", headers={"Cookie": bob})
    await member.join()
    await member.send({"topic": "shout", "payload": "hi", "id": 1})
    error = await member.recv()
    assert error["payload"] == {
        "code": "forbidden",
        "id": 1,
        "message": "not allowed to publish to topic 'shout'",
    }
    await member.send({"topic": "chat", "payload": "hi", "id": 2})
    assert (await member.recv_topic("ack"))["payload"]["id"] == 2
    await member.close()


async def test_custom_resolver_decides_every_room_join(example_url: str) -> None:
    """The application's resolver is asked again at room.join: a room it does not grant
    answers a `forbidden` error and the connection stays; one it grants joins."""
    ws_url = example_url.replace("http://", "ws://") + "/rt/api/v1/ws"
    bob = session_cookie(example_url, "bob", "builder")
    member = await Client.connect(ws_url, room="lobby", headers={"Cookie": bob})
    await member.join()
    await member.send({"topic": "room.join", "payload": {"roomID": "team-red"}, "id": 1})
    error = await member.recv()
    assert error["topic"] == "error"
    assert error["payload"]["code"] == "forbidden"
    assert error["payload"]["id"] == 1
    await member.barrier()
    await member.close()
    alice = session_cookie(example_url, "alice", "wonderland")
    roaming = await Client.connect(ws_url, headers={"Cookie": alice})
    assert (await roaming.join())["payload"]["rooms"] == []
    await roaming.send({"topic": "room.join", "payload": {"roomID": "team-red"}, "id": 2})
    assert (await roaming.recv())["topic"] == "joined"
    assert (await roaming.recv())["payload"] == {"id": 2}
    await roaming.close()


def test_wrong_password_is_refused(example_url: str) -> None:
    """The example's login refuses a wrong password."""
    with httpx.Client(base_url=example_url, timeout=5) as http:
        response = http.post("/login", json={"username": "alice", "password": "nope"})
        assert response.status_code == 401
