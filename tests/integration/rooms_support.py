"""Helpers for the v1.1 tests of several rooms per connection and several connections per
user (docs/protocol.md, sections 7-8): a client that joins rooms and reads frames per room."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.harness import RECV_TIMEOUT, Client, RedisProcess, ServerProcess

Start = Callable[..., ServerProcess]
_ids = itertools.count(1)


class RoomsClient(Client):
    """A harness client with `room.join` / `room.leave` and an error helper."""

    last_id: int = 0

    async def join_room(
        self, room: str, *, expect: str = "joined", ack: bool = True, **fields: Any
    ) -> dict[str, Any]:
        """Send `room.join` with an id; return the `joined` frame (and, with `ack`, check
        that the ack comes right after it: no replay) or, when `expect` is "error", the
        error frame that answers it."""
        frame_id = self.last_id = next(_ids)
        payload = {"roomID": room, **fields}
        await self.send({"topic": "room.join", "payload": payload, "id": frame_id})
        answer = await self.recv()
        if expect == "error":
            assert answer["topic"] == "error", answer
            assert answer["payload"]["id"] == frame_id, answer
            return answer
        assert answer["topic"] == "joined", answer
        if ack:
            await self.acked(frame_id)
        return answer

    async def leave_room(self, room: str) -> None:
        """Send `room.leave` and check its ack."""
        frame_id = self.last_id = next(_ids)
        await self.send({"topic": "room.leave", "payload": {"roomID": room}, "id": frame_id})
        await self.acked(frame_id)

    async def acked(self, frame_id: Any) -> dict[str, Any]:
        """Read the next frame and check it is the ack of `frame_id`."""
        ack = await self.recv()
        assert ack["topic"] == "ack", ack
        assert ack["payload"]["id"] == frame_id, ack
        return ack

    async def error(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send `frame` and return the error payload that answers it."""
        await self.send(frame)
        answer = await self.recv()
        assert answer["topic"] == "error", answer
        return answer["payload"]  # type: ignore[no-any-return]

    async def recv_until(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = RECV_TIMEOUT
    ) -> dict[str, Any]:
        """Read until a frame satisfies `predicate` (others skipped), bounded."""
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.recv(timeout)
                if predicate(frame):
                    return frame


async def connect(
    server: ServerProcess, username: str, room: str | None = None, **params: Any
) -> RoomsClient:
    """Connect and read the welcome frame."""
    client = await RoomsClient.connect(server.ws_url, username, room, **params)
    welcome = await client.join()
    client.welcome = welcome  # type: ignore[attr-defined]
    return client


@dataclass
class Pair:
    """Two nodes of one deployment: the same memory server twice, or two Redis nodes."""

    a: ServerProcess
    b: ServerProcess
    kind: str


def deploy(kind: str, start_server: Start, redis: RedisProcess | None, *flags: str) -> Pair:
    """Start one memory:// server (`a` and `b` are the same), or two nodes on `redis`."""
    if kind == "memory":
        server = start_server(*flags)
        return Pair(server, server, kind)
    assert redis is not None
    a = start_server("--broker", redis.url, "--node-id", "a", *flags)
    b = start_server("--broker", redis.url, "--node-id", "b", *flags)
    return Pair(a, b, kind)
