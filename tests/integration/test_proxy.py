"""PROTOCOL section 11, the backend proxy: connect (identity and grants), join and publish
(rewrite) callouts, their refusals (401, 403, timeouts, bad answers), and a slow backend
call that delays no other connection."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest

from tests.harness import Client, ServerProcess
from tests.integration.backend_support import Backend, running_backend
from tests.integration.test_webhooks import metric

StartServer = Callable[..., ServerProcess]


@pytest.fixture
def backend() -> Iterator[Backend]:
    """The scriptable backend as a real process on 127.0.0.1."""
    with running_backend() as running:
        yield running


def proxy_flags(backend: Backend, *kinds: str) -> tuple[str, ...]:
    flags: list[str] = []
    for kind in kinds:
        flags += [f"--proxy-{kind}-url", f"{backend.url}/{kind}"]
    return tuple(flags)


def bodies(backend: Backend, path: str) -> list[dict[str, Any]]:
    return [orjson.loads(r["body"]) for r in backend.requests(path)]


async def test_connect_answer_gives_the_identity_and_its_grants(
    start_server: StartServer, backend: Backend
) -> None:
    """The connect backend gets username, roomID, token, the four forwarded headers and the
    client address; its answer's username is the identity, `rooms` and `publish` restrict
    joins and topics like a token's claims."""
    backend.rules(
        {
            "path": "/connect",
            "body": '{"username": "alice", "rooms": ["r1"], "publish": ["chat"]}',
        }
    )
    server = start_server(*proxy_flags(backend, "connect"))
    client = await Client.connect(
        server.ws_url, room="r1", token="t1", headers={"Cookie": "sid=1", "X-Other": "no"}
    )
    welcome = await client.join()
    assert welcome["payload"]["username"] == "alice"
    [body] = bodies(backend, "/connect")
    assert {k: body[k] for k in ("username", "roomID", "token", "client")} == {
        "username": None,
        "roomID": "r1",
        "token": "t1",
        "client": "127.0.0.1",
    }
    assert body["headers"]["cookie"] == "sid=1"
    assert set(body["headers"]) <= {"cookie", "authorization", "origin", "user-agent"}
    await client.send({"topic": "room.join", "payload": {"roomID": "r2"}, "id": 1})
    refused = await client.recv_topic("error")
    assert refused["payload"]["code"] == "forbidden"
    await client.send({"topic": "other", "payload": {}, "id": 2})
    assert (await client.recv_topic("error"))["payload"]["code"] == "forbidden"
    await client.send({"topic": "chat", "payload": {}, "id": 3})
    assert (await client.recv_topic("ack"))["payload"]["id"] == 3
    assert metric(server, 'roomcast_proxy_calls_total{kind="connect",result="allowed"}') == 1
    await client.close()


@pytest.mark.parametrize(
    ("rule", "close_code", "code"),
    [
        ({"status": 401}, 4401, "unauthenticated"),
        ({"status": 403}, 4403, "forbidden"),
        ({"status": 500}, 4503, "unavailable"),
        ({"status": 204, "body": ""}, 4503, "unavailable"),
        ({"body": "not json"}, 4503, "unavailable"),
        ({"body": "[]"}, 4503, "unavailable"),
        ({"body": '{"rooms": "r1"}'}, 4503, "unavailable"),
        ({"body": '{"publish": [1]}'}, 4503, "unavailable"),
        ({"body": '{"username": 5}'}, 4503, "unavailable"),
        ({"body": '{"username": "has space"}'}, 4503, "unavailable"),
        ({"delay": 2.0}, 4503, "unavailable"),
        # Every byte in time for a read timeout, the whole answer not within the total.
        ({"body": '{"username": "alice"}', "trickle": 0.1}, 4503, "unavailable"),
        ({"body": '{"rooms": ["elsewhere"]}'}, 4403, "forbidden"),
        # The query names alice, the backend someone else: as a token's other subject.
        ({"body": '{"username": "zoe"}'}, 4401, "unauthenticated"),
    ],
)
async def test_connect_refusals(
    start_server: StartServer,
    backend: Backend,
    rule: dict[str, Any],
    close_code: int,
    code: str,
) -> None:
    """401 and 403 refuse as unauthenticated and forbidden; any other answer (a status, no
    JSON object, wrong types, no answer within --proxy-timeout) as unavailable (4503); a
    grant that leaves out the URL's room as forbidden."""
    backend.rules({"path": "/connect", **rule})
    server = start_server(*proxy_flags(backend, "connect"), "--proxy-timeout", "0.5")
    client = await Client.connect(server.ws_url, "alice", "r1")
    closed, frames = await client.closed()
    assert closed == close_code
    assert [f["payload"]["code"] for f in frames] == [code]


async def test_connect_with_no_username_anywhere_is_a_bad_request(
    start_server: StartServer, backend: Backend
) -> None:
    """An answer `{}` keeps the query's username, one that names the same user too; without
    one anywhere the connect is 4400."""
    backend.rules(
        {"path": "/connect", "contains": '"username":"carol"', "body": '{"username": "carol"}'}
    )
    server = start_server(*proxy_flags(backend, "connect"))
    named = await Client.connect(server.ws_url, "bob", "r1")
    assert (await named.join())["payload"]["username"] == "bob"
    same = await Client.connect(server.ws_url, "carol", "r1")
    assert (await same.join())["payload"]["username"] == "carol"
    await same.close()
    anonymous = await Client.connect(server.ws_url, room="r1")
    closed, frames = await anonymous.closed()
    assert closed == 4400
    assert frames[0]["payload"]["code"] == "bad_request"
    await named.close()


async def test_join_callouts_refuse_with_error_frames_and_close_codes(
    start_server: StartServer, backend: Backend
) -> None:
    """Every join asks the join backend (with the connection's id): a refused room.join is
    an error frame and the connection stays; a refused URL room closes with 4403; a slow
    backend answers unavailable."""
    backend.rules(
        {"path": "/join", "contains": '"roomID":"locked"', "status": 403},
        {"path": "/join", "contains": '"roomID":"slow"', "delay": 2.0},
    )
    server = start_server(*proxy_flags(backend, "join"), "--proxy-timeout", "0.5")
    alice = await Client.connect(server.ws_url, "alice", "r1")
    welcome = await alice.join()
    assert bodies(backend, "/join") == [
        {"username": "alice", "roomID": "r1", "connectionId": welcome["payload"]["connectionId"]}
    ]
    await alice.send({"topic": "room.join", "payload": {"roomID": "locked"}, "id": 1})
    assert (await alice.recv_topic("error"))["payload"] == {
        "code": "forbidden",
        "message": "the backend refused the join",
        "id": 1,
    }
    await alice.send({"topic": "room.join", "payload": {"roomID": "slow"}, "id": 2})
    assert (await alice.recv_topic("error"))["payload"]["code"] == "unavailable"
    await alice.send({"topic": "room.join", "payload": {"roomID": "r2"}, "id": 3})
    assert (await alice.recv_topic("joined"))["room"] == "r2"
    locked = await Client.connect(server.ws_url, "bob", "locked")
    closed, frames = await locked.closed()
    assert closed == 4403
    assert frames[0]["payload"]["code"] == "forbidden"
    await alice.close()


async def test_publish_callouts_rewrite_and_refuse(
    start_server: StartServer, backend: Backend
) -> None:
    """The publish backend sees each client frame; `{"payload": ...}` rewrites what the room
    gets, 403 answers forbidden and publishes nothing, a null payload is unavailable."""
    backend.rules(
        {"path": "/publish", "contains": "shout", "body": '{"payload": {"text": "HI"}}'},
        {"path": "/publish", "contains": "secret", "status": 403},
        {"path": "/publish", "contains": "nullify", "body": '{"payload": null}'},
    )
    server = start_server(*proxy_flags(backend, "publish"))
    alice = await Client.connect(server.ws_url, "alice", "r1")
    welcome = await alice.join()
    bob = await Client.connect(server.ws_url, "bob", "r1")
    await bob.join()
    await alice.send({"topic": "chat", "payload": {"text": "shout"}, "id": 1})
    assert (await bob.recv_topic("chat"))["payload"] == {"text": "HI"}
    await alice.send({"topic": "chat", "payload": {"text": "secret"}, "id": 2})
    assert (await alice.recv_topic("error"))["payload"]["code"] == "forbidden"
    await alice.send({"topic": "chat", "payload": {"text": "nullify"}, "id": 3})
    assert (await alice.recv_topic("error"))["payload"]["code"] == "unavailable"
    await alice.send({"topic": "chat", "payload": {"text": "plain"}, "id": 4})
    assert (await bob.recv_topic("chat"))["payload"] == {"text": "plain"}
    await bob.barrier()  # nothing of the refused frames reached the room
    assert bodies(backend, "/publish")[0] == {
        "username": "alice",
        "roomID": "r1",
        "topic": "chat",
        "payload": {"text": "shout"},
        "connectionId": welcome["payload"]["connectionId"],
    }
    await alice.close()
    await bob.close()


@pytest.mark.parametrize("broker", ["memory", "redis"])
async def test_a_slow_publish_call_delays_no_other_connection(
    start_server: StartServer, backend: Backend, request: pytest.FixtureRequest, broker: str
) -> None:
    """While the backend holds one connection's publish call, the other connections' frames
    are asked about, published and acknowledged; the held connection's frames then follow
    in their order (on redis:// too, where frames are otherwise pipelined to the broker)."""
    backend.rules({"path": "/publish", "contains": "slowpoke", "hold": True})
    flags: tuple[str, ...] = ()
    if broker == "redis":
        flags = ("--broker", request.getfixturevalue("redis_server").url)
    server = start_server(*proxy_flags(backend, "publish"), "--proxy-timeout", "30", *flags)
    alice, bob, carol = [await Client.connect(server.ws_url, n, "r1") for n in ("a", "b", "c")]
    for client in (alice, bob, carol):
        await client.join()
    await alice.send({"topic": "chat", "payload": "slowpoke", "id": 1})
    await alice.send({"topic": "chat", "payload": "second", "id": 2})
    backend.wait_held(1)
    for n in range(5):
        await bob.send({"topic": "chat", "payload": n, "id": n})
        assert (await carol.recv_topic("chat"))["payload"] == n
        assert (await bob.recv_topic("ack"))["payload"]["id"] == n
    assert backend.held() == 1  # alice's call is still held by the backend
    backend.release()
    assert (await carol.recv_topic("chat"))["payload"] == "slowpoke"
    assert (await carol.recv_topic("chat"))["payload"] == "second"
    assert (await alice.recv_topic("ack"))["payload"]["id"] == 1
    for client in (alice, bob, carol):
        await client.close()
