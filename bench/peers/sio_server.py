"""python-socketio on uvicorn with rooms: "join" (acknowledged), then "m" is emitted to the room.

python bench/peers/sio_server.py PORT
"""

from __future__ import annotations

import sys
from typing import Any

import socketio
import uvicorn

sio = socketio.AsyncServer(async_mode="asgi", transports=["websocket"], http_compression=False)
app = socketio.ASGIApp(sio)
room_of: dict[str, str] = {}


@sio.event
async def join(sid: str, room: str) -> bool:
    """Enter the room; the acknowledgement tells the client it is in."""
    await sio.enter_room(sid, room)
    room_of[sid] = room
    return True


@sio.event
async def m(sid: str, data: Any) -> None:
    """Emit to the sender's room, the sender included."""
    await sio.emit("m", data, room=room_of.get(sid))


@sio.event
async def disconnect(sid: str, *_: Any) -> None:
    """Forget the sender's room."""
    room_of.pop(sid, None)


if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        loop="uvloop",
        ws_per_message_deflate=False,
        log_level="warning",
        access_log=False,
    )
