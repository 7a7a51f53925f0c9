"""roomcast inside a FastAPI app: topic handlers, an event subscriber, and HTTP routes that
send commands.

- WebSocket: `ws://127.0.0.1:8000/rt/api/v1/ws?username=alice&roomID=lobby`
- roomcast's HTTP API: `http://127.0.0.1:8000/rt/api/v1/rooms`
- this app's own routes: `POST /rooms/{room}/announce`, `POST /rooms/{room}/members/{name}/nudge`

What it shows:

- `@rc.on("order")` registers three handlers of one topic. They run concurrently for each
  frame; when one raises, the sender gets a `handler_error` frame (with the frame's `id`), the
  traceback is logged, and the other handlers still run.
- `@rc.on("shout")` replaces the default relay for one topic: the handler rewrites the payload
  and publishes it to the room itself.
- `@rc.on_event(MemberJoined)` greets every new member privately (a `SendToMember` command).
- The HTTP routes send `PublishToRoom` and `SendToMember`, the commands the HTTP API also uses.

Run it:

    uvicorn --app-dir examples fastapi_app:app

or `python examples/fastapi_app.py [PORT]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from roomcast import (
    Context,
    MemberJoined,
    MemberNotFound,
    PublishToRoom,
    Roomcast,
    SendToMember,
)
from roomcast.log import configure_logging

configure_logging("info")

rc = Roomcast()
app = FastAPI(lifespan=rc.lifespan)
app.mount("/rt", rc)


# Topic handlers. Topics without a handler are still relayed to the room as they are.


@rc.on("shout")
async def shout(ctx: Context) -> None:
    """Publish the text in capitals to the sender's room."""
    await ctx.broadcast("shout", {"text": str(ctx.payload.get("text", "")).upper()})


_started: dict[int, asyncio.Event] = {}
"""One event per frame being handled (every handler of a frame gets the same Context)."""


@rc.on("order")
async def confirm_order(ctx: Context) -> None:
    """Tell the sender the order was received."""
    started = _started.setdefault(id(ctx), asyncio.Event())
    started.set()
    ctx.reply("order.received", {"item": ctx.payload.get("item")})


@rc.on("order")
async def announce_order(ctx: Context) -> None:
    """Tell the room what was ordered, once the confirmation is under way.

    Waiting for the sibling handler shows that the handlers of a frame run at the same time:
    run one after the other, this one would wait out its timeout.
    """
    started = _started.setdefault(id(ctx), asyncio.Event())
    try:
        async with asyncio.timeout(2):
            await started.wait()
    finally:
        _started.pop(id(ctx), None)
    await ctx.broadcast("order.placed", {"item": ctx.payload.get("item"), "by": ctx.username})


class PaymentDeclined(Exception):
    """The (pretend) payment provider refused the card."""


@rc.on("order")
async def charge_card(ctx: Context) -> None:
    """Charge the card: the pretend provider declines the card number "0000"."""
    if ctx.payload.get("card") == "0000":
        raise PaymentDeclined("card declined")


# Events


@rc.on_event(MemberJoined)
async def greet(event: MemberJoined) -> None:
    """Send every new member a private greeting."""
    with contextlib.suppress(MemberNotFound):  # already gone again
        await rc.send(
            SendToMember(event.room, event.username, "greeting", {"text": f"hi {event.username}"})
        )


# The application's own HTTP routes, sending commands


class Announcement(BaseModel):
    """Body of `POST /rooms/{room}/announce`."""

    text: str


@app.post("/rooms/{room}/announce", status_code=202)
async def announce(room: str, body: Announcement) -> dict[str, int]:
    """Publish an announcement to every member of `room`; returns its offset."""
    offset = await rc.send(PublishToRoom(room, "announcement", {"text": body.text}))
    return {"offset": offset}


@app.post("/rooms/{room}/members/{username}/nudge", status_code=202)
async def nudge(room: str, username: str) -> dict[str, int]:
    """Send one member a nudge; 404 when that member is not connected."""
    try:
        offset = await rc.send(SendToMember(room, username, "nudge", {"from": "the app"}))
    except MemberNotFound as exc:
        raise HTTPException(404, exc.message) from None
    return {"offset": offset}


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]) if len(sys.argv) > 1 else 8000)
