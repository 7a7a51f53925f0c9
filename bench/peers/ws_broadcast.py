"""The floor of asyncio Python: a `websockets` server relaying each frame with `broadcast`.

    python bench/peers/ws_broadcast.py PORT

Clients connect to `/?room=ROOM&user=NAME`; every text frame is sent to every member of the
sender's room (the sender included), encoded once.
"""

from __future__ import annotations

import sys
from urllib.parse import parse_qs, urlsplit

import uvloop
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

rooms: dict[str, set[ServerConnection]] = {}


async def handler(ws: ServerConnection) -> None:
    """Join the room named in the query, relay every frame to it, leave."""
    assert ws.request is not None
    room = parse_qs(urlsplit(ws.request.path).query).get("room", ["r"])[0]
    members = rooms.setdefault(room, set())
    members.add(ws)
    try:
        async for message in ws:
            broadcast(members, message)
    except ConnectionClosed:
        pass  # the generator exits without closing: not worth a traceback each
    finally:
        members.discard(ws)
        if not members:
            rooms.pop(room, None)


async def main(port: int) -> None:
    """Serve until killed."""
    async with serve(handler, "127.0.0.1", port, compression=None, max_queue=None) as server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
