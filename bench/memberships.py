"""Memory per extra room membership: what one more `room.join` costs the server.

Runs a node in-process on memory:// with connections that write nowhere, joins each of them
to more rooms, and measures the growth with tracemalloc (docs/benchmarks.md, "Memory per
membership"):

    .venv/bin/python bench/memberships.py [--connections 1000] [--rooms 10]

Two shapes: every connection joins the same `--rooms` rooms (members of big shared rooms),
and every join opens a room of its own (one member per room: the dearest case, a local room,
a subscription and a broker stream each).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import tracemalloc

import orjson

from roomcast.admission import open_session
from roomcast.node import Node
from roomcast.session import Session
from roomcast.settings import Settings


class Sink:
    """A connection that drops what it is sent."""

    buffered = 0

    def send(self, data: str) -> None:
        pass

    def close(self, code: int, reason: str = "") -> None:
        pass

    def abort(self, code: int, reason: str = "") -> None:
        pass


def _join(room: str) -> str:
    return orjson.dumps({"topic": "room.join", "payload": {"roomID": room}}).decode()


async def measure(connections: int, rooms: int, shared: bool) -> float:
    """Bytes per membership added by `rooms` joins of each of `connections` connections."""
    settings = Settings(node_id="bench", rate_limit=None, max_rooms_per_connection=None)
    node = Node(settings)
    await node.start()
    sessions: list[Session] = []
    for n in range(connections):
        query = {"username": f"u{n}", "roomID": "lobby"}
        session = await open_session(node, Sink(), query, {})
        assert session is not None
        sessions.append(session)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for k in range(rooms):
        for n, session in enumerate(sessions):
            await session.receive(_join(f"room-{k}" if shared else f"room-{n}-{k}"))
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert all(len(s.rooms) == rooms + 1 for s in sessions)
    await node.shutdown(timeout=1)
    return grown / (connections * rooms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--rooms", type=int, default=10)
    args = parser.parse_args()
    for shared in (True, False):
        per = asyncio.run(measure(args.connections, args.rooms, shared))
        shape = "shared rooms" if shared else "a room per join"
        print(
            f"{shape}: {per / 1024:.2f} KiB per extra membership "
            f"({args.connections} connections x {args.rooms} rooms)"
        )


if __name__ == "__main__":
    main()
