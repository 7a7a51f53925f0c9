"""PROTOCOL section 11, webhooks: every event type, the signature, order per room, retries,
a receiver that is down for a while, drops after --webhook-retry-for, the share rule, and on
redis:// two nodes (each event once) and the kill -9 of the node that produced the events."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.harness import Client, RedisProcess, ServerProcess, quiet_port
from tests.integration.backend_support import Backend, running_backend, unique, verify

StartServer = Callable[..., ServerProcess]

ALL = "room.occupied,room.vacated,member.joined,member.left,message.published"
FAST = ("--webhook-retry-min", "0.05", "--webhook-retry-max", "0.2", "--webhook-timeout", "1")


@pytest.fixture
def backend() -> Iterator[Backend]:
    """The scriptable receiver as a real process on 127.0.0.1."""
    with running_backend() as running:
        yield running


def hook_flags(backend: Backend, *more: str) -> tuple[str, ...]:
    return ("--webhook-url", f"{backend.url}/hook", *FAST, *more)


def kinds(events: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """(type, room, username) of each event: what the order checks compare."""
    return [(e["type"], e["room"], *((e["username"],) if "username" in e else ())) for e in events]


def metric(server: ServerProcess, name: str) -> float:
    """The sum of a metric's samples on `server` (0 when absent)."""
    with server.http() as http:
        text = http.get("/metrics").text
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", re.M)
    return sum(float(v) for v in pattern.findall(text))


def check_room_order(events: list[dict[str, Any]]) -> None:
    """Per room: room.occupied opens, joins and leaves alternate per user, room.vacated comes
    after the last leave and only then; nothing happens in a vacated room."""
    rooms: dict[str, set[str] | None] = {}
    for event in events:
        room, kind = event["room"], event["type"]
        members = rooms.get(room)
        if kind == "room.occupied":
            assert members is None, event
            rooms[room] = set()
        elif kind == "room.vacated":
            assert members == set(), event
            rooms[room] = None
        elif kind == "member.joined":
            assert members is not None, event
            assert event["username"] not in members, event
            members.add(event["username"])
        elif kind == "member.left":
            assert members is not None, event
            assert event["username"] in members, event
            members.discard(event["username"])
    assert all(m is None for m in rooms.values()), rooms


async def test_every_event_type_is_sent_signed_in_order(
    start_server: StartServer, backend: Backend
) -> None:
    """room.occupied, member.joined, message.published, member.left (kicked, closed) and
    room.vacated arrive in order with their fields, each request signed over
    "<timestamp>.<body>" with X-Roomcast-Timestamp."""
    server = start_server(
        *hook_flags(backend, "--webhook-secret", "s3cret", "--webhook-events", ALL),
        "--node-id",
        "n1",
    )
    alice = await Client.connect(server.ws_url, "alice", "r1")
    await alice.join()
    bob = await Client.connect(server.ws_url, "bob", "r1")
    await bob.join()
    await alice.recv_topic("presence.join")
    await alice.send({"topic": "chat", "payload": {"text": "hi"}, "id": 1})
    await alice.recv_topic("ack")
    with server.http() as http:
        assert http.delete("/api/v1/rooms/r1/members/bob").status_code == 204
    await bob.closed()
    await alice.close()
    backend.wait_delivered(7)
    events = backend.delivered()
    assert kinds(events) == [
        ("room.occupied", "r1"),
        ("member.joined", "r1", "alice"),
        ("member.joined", "r1", "bob"),
        ("message.published", "r1"),
        ("member.left", "r1", "bob"),
        ("member.left", "r1", "alice"),
        ("room.vacated", "r1"),
    ]
    assert len({e["id"] for e in events}) == 7
    assert all(e["node"] == "n1" and isinstance(e["time"], int) for e in events)
    message = events[3]
    assert (message["topic"], message["from"], message["offset"], message["payload"]) == (
        "chat",
        "alice",
        1,
        {"text": "hi"},
    )
    assert (events[4]["reason"], events[5]["reason"]) == ("kicked", "closed")
    requests = backend.requests("/hook")
    assert requests
    for request in requests:
        assert request["headers"]["content-type"] == "application/json"
        assert request["headers"]["x-roomcast-timestamp"].isdigit()
        assert verify("s3cret", request)
        assert not verify("other-secret", request)


async def test_default_events_leave_messages_out_and_no_secret_no_signature(
    start_server: StartServer, backend: Backend
) -> None:
    """By default message.published is not sent, and without a secret no signature header."""
    server = start_server(*hook_flags(backend))
    alice = await Client.connect(server.ws_url, "alice", "r1")
    await alice.join()
    await alice.send({"topic": "chat", "payload": 1, "id": 1})
    await alice.recv_topic("ack")
    await alice.close()
    backend.wait_delivered(4)
    assert [e["type"] for e in backend.delivered()] == [
        "room.occupied",
        "member.joined",
        "member.left",
        "room.vacated",
    ]
    assert all("x-roomcast-signature" not in r["headers"] for r in backend.requests("/hook"))


async def test_share_policy_sends_one_join_and_one_leave_per_user(
    start_server: StartServer, backend: Backend
) -> None:
    """Under --on-duplicate share, two tabs of alice are one member.joined and one
    member.left (the last tab's)."""
    server = start_server(*hook_flags(backend), "--on-duplicate", "share")
    tabs = [await Client.connect(server.ws_url, "alice", "r1") for _ in range(2)]
    for tab in tabs:
        await tab.join()
    await tabs[0].close()
    await tabs[1].barrier()
    await tabs[1].close()
    backend.wait_delivered(4)
    assert kinds(backend.delivered()) == [
        ("room.occupied", "r1"),
        ("member.joined", "r1", "alice"),
        ("member.left", "r1", "alice"),
        ("room.vacated", "r1"),
    ]


async def test_concurrent_joins_and_leaves_keep_each_room_in_order(
    start_server: StartServer, backend: Backend
) -> None:
    """Thirty clients joining and leaving three rooms at once: per room the events tell one
    consistent story (occupied, alternating joins and leaves, vacated after the last)."""
    server = start_server(*hook_flags(backend))

    async def visit(i: int) -> None:
        for round_ in range(2):
            client = await Client.connect(server.ws_url, f"u{i}", f"room{(i + round_) % 3}")
            await client.join()
            await client.close()

    await asyncio.gather(*(visit(i) for i in range(30)))
    events = backend.wait_events(
        lambda events: (
            sum(e["type"] == "member.left" for e in events) == 60
            and sum(e["type"] == "room.vacated" for e in events)
            == sum(e["type"] == "room.occupied" for e in events)
        )
    )
    check_room_order(events)
    assert sum(e["type"] == "member.joined" for e in events) == 60
    assert sum(e["type"] == "member.left" for e in events) == 60


async def test_5xx_and_timeouts_are_retried_until_delivered(
    start_server: StartServer, backend: Backend
) -> None:
    """A receiver answering 503, then too slowly (its whole answer, though each byte comes
    in time for a read), gets the same batch again with backoff; once it answers 2xx every
    event arrives in order; /metrics counts the retries."""
    backend.rules({"path": "/hook", "status": 503})
    server = start_server(*hook_flags(backend), "--webhook-timeout", "0.3")
    alice = await Client.connect(server.ws_url, "alice", "r1")
    await alice.join()
    backend.wait_answered(r"path=/hook status=503")
    backend.rules({"path": "/hook", "trickle": 0.2, "body": "{" + " " * 20 + "}"})
    with server.http() as http:
        deadline = asyncio.get_running_loop().time() + 20
        while metric(server, 'roomcast_webhook_requests_total{result="timeout"}') < 1:
            assert asyncio.get_running_loop().time() < deadline, http.get("/metrics").text
            await alice.barrier()  # a round trip to the server, not a sleep
    backend.rules()
    await alice.close()
    backend.wait_delivered(4)
    events = unique(backend.delivered())
    assert kinds(events) == [
        ("room.occupied", "r1"),
        ("member.joined", "r1", "alice"),
        ("member.left", "r1", "alice"),
        ("room.vacated", "r1"),
    ]
    assert metric(server, "roomcast_webhook_retries_total") >= 2
    assert metric(server, 'roomcast_webhook_requests_total{result="status_5xx"}') >= 1
    assert metric(server, "roomcast_webhook_events_delivered_total") >= 4


async def test_receiver_down_then_up_gets_everything_in_order(start_server: StartServer) -> None:
    """Nothing listens at the webhook URL while rooms come and go; once the receiver starts,
    every event arrives, in order, deduplicable by id."""
    port = quiet_port()
    server = start_server(
        "--webhook-url", f"http://127.0.0.1:{port}/hook", *FAST, "--webhook-batch-size", "3"
    )
    for i in range(4):
        client = await Client.connect(server.ws_url, f"u{i}", f"r{i % 2}")
        await client.join()
        await client.close()
    with server.http() as http:
        deadline = asyncio.get_running_loop().time() + 20
        while metric(server, 'roomcast_webhook_requests_total{result="error"}') < 2:
            assert asyncio.get_running_loop().time() < deadline, http.get("/metrics").text
            http.get("/healthz")  # a round trip to the server, not a sleep
    with running_backend(port) as backend:
        backend.wait_delivered(16)
        events = unique(backend.delivered())
    assert len(events) == 16
    check_room_order(events)
    for room in ("r0", "r1"):
        assert [e["username"] for e in events if e["room"] == room and "username" in e] == [
            u for i in range(4) if f"r{i % 2}" == room for u in (f"u{i}", f"u{i}")
        ]


async def test_events_are_dropped_and_counted_after_retry_for(
    start_server: StartServer, backend: Backend
) -> None:
    """A receiver failing for longer than --webhook-retry-for loses that batch (counted in
    /metrics as dropped); later events are delivered."""
    backend.rules({"path": "/hook", "status": 500})
    server = start_server(*hook_flags(backend), "--webhook-retry-for", "0.5")
    alice = await Client.connect(server.ws_url, "alice", "r1")
    await alice.join()
    with server.http() as http:
        deadline = asyncio.get_running_loop().time() + 20
        while metric(server, "roomcast_webhook_events_dropped_total") < 2:
            assert asyncio.get_running_loop().time() < deadline, http.get("/metrics").text
            await alice.barrier()
    backend.rules()
    await alice.close()
    backend.wait_delivered(2)
    assert kinds(backend.delivered()) == [
        ("member.left", "r1", "alice"),
        ("room.vacated", "r1"),
    ]
    assert metric(server, 'roomcast_webhook_events_dropped_total{reason="expired"}') == 2


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_past_max_pending_what_is_counted_dropped_is_never_delivered(
    request: pytest.FixtureRequest, start_server: StartServer, backend: Backend, kind: str
) -> None:
    """Events piling up past --webhook-max-pending while the receiver fails: the batch being
    retried is kept and delivered, the oldest after it are dropped and counted, and no event
    is both counted as dropped and delivered (delivered + dropped = published)."""
    backend.rules({"path": "/hook", "status": 500})
    broker = ("--broker", request.getfixturevalue("redis_server").url) if kind == "redis" else ()
    server = start_server(
        *hook_flags(backend, "--webhook-events", "message.published"),
        *broker,
        "--webhook-max-pending", "8", "--webhook-batch-size", "3",
    )  # fmt: skip
    with server.http() as http:
        publish = {"topic": "t", "payload": 0}
        assert http.post("/api/v1/rooms/r1/messages", json=publish).status_code == 202
        backend.wait_answered(r"path=/hook status=500")  # that batch is being retried now
        for n in range(1, 20):
            publish = {"topic": "t", "payload": n}
            assert http.post("/api/v1/rooms/r1/messages", json=publish).status_code == 202
        dropped = 'roomcast_webhook_events_dropped_total{reason="overflow"}'
        backend.rules()
        deadline = asyncio.get_running_loop().time() + 20
        while (
            metric(server, "roomcast_webhook_events_delivered_total") + metric(server, dropped) < 20
        ):
            assert asyncio.get_running_loop().time() < deadline, http.get("/metrics").text
            http.get("/healthz")  # a round trip to the server, not a sleep
    events = unique(backend.delivered())
    offsets = [e["offset"] for e in events]
    assert offsets[0] == 1, offsets  # the batch that was being sent when the bound was met
    assert offsets == sorted(offsets)
    assert len(events) == metric(server, "roomcast_webhook_events_delivered_total")
    assert len(events) + metric(server, dropped) == 20
    assert metric(server, dropped) > 0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--webhook-url", "ftp://x/hook"), "webhook-url must be an http:// or https:// URL"),
        (("--webhook-events", "member.joined,room.exploded"), "unknown event type"),
        (("--webhook-retry-min", "0"), "webhook-retry-min must be > 0"),
        (("--proxy-timeout", "-1"), "proxy-timeout must be > 0"),
        (("--proxy-join-url", "backend:9000"), "proxy-join-url must be an http"),
        (
            ("--proxy-connect-url", "http://b/c", "--jwt-secret", "k"),
            "use either --proxy-connect-url",
        ),
    ],
)
def test_bad_webhook_and_proxy_flags_stop_serve(flags: tuple[str, ...], message: str) -> None:
    """A malformed webhook or proxy flag stops `roomcast serve` with exit code 2 and a
    message naming it."""
    result = subprocess.run(
        [sys.executable, "-m", "roomcast", "serve", "--port", "0", *flags],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr


# redis://


@pytest.fixture(params=["redis", "sharded"])
def shared_broker(request: pytest.FixtureRequest) -> str:
    """One Redis, or rooms spread over two Redis servers (each keeps its rooms' events)."""
    if request.param == "redis":
        redis: RedisProcess = request.getfixturevalue("redis_server")
        return redis.url
    servers: list[RedisProcess] = request.getfixturevalue("two_redis_servers")
    return ",".join(server.url for server in servers)


async def test_two_nodes_send_each_event_once(
    start_server: StartServer, shared_broker: str, backend: Backend
) -> None:
    """Members of the same rooms on two nodes: every event reaches the receiver exactly once
    (one node holds each outbox shard), room.occupied/vacated once per occupancy; also with
    the rooms spread over two Redis servers."""
    flags = ("--broker", shared_broker, *hook_flags(backend))
    a = start_server(*flags, "--node-id", "a")
    b = start_server(*flags, "--node-id", "b")
    clients = []
    for i in range(6):
        node = a if i % 2 else b
        client = await Client.connect(node.ws_url, f"u{i}", f"room{i % 3}")
        await client.join()
        clients.append(client)
    for client in clients:
        await client.close()
    backend.wait_delivered(18)  # per room: occupied, 2 joins, 2 leaves, vacated
    events = backend.delivered()
    assert len(events) == 18
    assert len({e["id"] for e in events}) == 18
    check_room_order(events)
    assert {e["node"] for e in events if e["type"] == "member.joined"} == {"a", "b"}


async def test_kill_9_of_the_producing_node_loses_no_event(
    start_server: StartServer, redis_server: RedisProcess, backend: Backend
) -> None:
    """Node a produces events while the receiver fails, then is killed with -9: node b takes
    its outbox shards over and delivers them, and its sweep adds a's member's member.left
    (node_lost) once; each id arrives once."""
    backend.rules({"path": "/hook", "status": 500})
    flags = ("--broker", redis_server.url, "--presence-ttl", "3", *hook_flags(backend))
    a = start_server(*flags, "--node-id", "a")
    alice = await Client.connect(a.ws_url, "alice", "r1")
    await alice.join()
    backend.wait_answered(r"path=/hook status=500")
    b = start_server(*flags, "--node-id", "b")
    a.kill()
    await alice.closed()
    backend.rules()
    backend.wait_delivered(4, timeout=30)
    events = backend.delivered()
    assert len(events) == 4  # nothing was answered 2xx before the kill: no repeats
    assert kinds(events) == [
        ("room.occupied", "r1"),
        ("member.joined", "r1", "alice"),
        ("member.left", "r1", "alice"),
        ("room.vacated", "r1"),
    ]
    assert events[2]["reason"] == "node_lost"
    assert events[2]["node"] == "a"
    with b.http() as http:
        assert http.get("/api/v1/rooms/r1/members").json() == {"members": []}
