"""Limits stay per connection with many rooms: the frame rate counts every frame of the
connection whatever its room, and a slow consumer is closed with 4408 whichever room floods."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import orjson

from tests.integration.reliability import RawClient, metric, publish
from tests.integration.rooms_support import Start, connect


def rid() -> str:
    """A room id no other test uses."""
    return f"l-{uuid.uuid4().hex[:8]}"


async def test_rate_limit_counts_frames_of_every_room(start_server: Start) -> None:
    """With a burst of 4, a join and three frames spread over two rooms pass; the next
    frame, whatever its room, is refused with `rate_limited`."""
    server = start_server("--rate-limit", "0.01", "--rate-burst", "4")
    r1, r2 = rid(), rid()
    alice = await connect(server, "alice", r1)
    await alice.join_room(r2)
    for n, room in enumerate((r1, r2, r1, r2)):
        await alice.send({"topic": "chat", "payload": n, "room": room, "id": n})
    acks, errors = [], []
    while len(acks) + len(errors) < 4:
        frame = await alice.recv()
        if frame["topic"] == "ack":
            acks.append(frame["payload"]["id"])
        elif frame["topic"] == "error":
            errors.append(frame["payload"])
    assert acks == [0, 1, 2]
    assert [(e["code"], e["id"]) for e in errors] == [("rate_limited", 3)]
    await alice.close()


async def test_slow_consumer_is_closed_whatever_room_floods(start_server: Start) -> None:
    """A connection in two rooms that stops reading is closed with 4408 when its second
    room floods, and leaves both rooms."""
    server = start_server("--outbound-buffer", "65536")
    assert server.log is not None
    r1, r2 = rid(), rid()
    slow = await RawClient.connect(server, "slow", r1, rcvbuf=4096)
    await slow.send_text({"topic": "room.join", "payload": {"roomID": r2}})
    async with asyncio.timeout(5):
        while True:
            opcode, data = await slow.read_frame()
            if opcode == 0x1 and orjson.loads(data)["topic"] == "joined":
                break
    watcher = await connect(server, "watcher", r2)
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
        members = await http.get(f"/api/v1/rooms/{r2}/members")
        assert members.json() == {"members": ["slow", "watcher"]}
        payload = {"blob": "x" * 8192}
        for _ in range(4000):
            await publish(http, r2, payload)
            if any("connection.slow_consumer" in line for line in server.log.lines):
                break
        else:
            raise AssertionError("the stalled reader was never disconnected")
        server.log.wait_for(r"connection\.left .*username=slow .*rooms=2", timeout=5)
        for room in (r1, r2):
            members = await http.get(f"/api/v1/rooms/{room}/members")
            assert "slow" not in members.json()["members"]
    assert metric(server, 'roomcast_disconnects_total{code="4408"}') == 1.0
    code, _ = await slow.read_until_close(timeout=10)
    assert code in (4408, None)
    slow.close()
    await watcher.close()
