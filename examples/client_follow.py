"""Follow a room until a `stop` message arrives: iteration, connection states and recovery.

    python examples/client_follow.py [ws://127.0.0.1:8000]

Then, from another terminal:

    roomcast publish --room lobby --topic news --payload '{"headline": "hello"}'
    roomcast publish --room lobby --topic stop --payload '{}'
"""

import asyncio
import sys

from roomcast.client import Client, ClientState, Welcome


def state_changed(state: ClientState) -> None:
    print("state:", state, flush=True)


def recovery_failed(welcome: Welcome) -> None:
    # Messages were missed for good (server restarted without shared history, or they are too
    # old): reload whatever the application shows from its own source of truth.
    print("missed messages could not be replayed; reloading", flush=True)


async def main(url: str) -> None:
    client = Client(
        url,
        username="follower",
        room="lobby",
        on_state=state_changed,
        on_recovery_failed=recovery_failed,
    )
    async with client:
        async for frame in client:  # every frame, in order, once, across reconnects
            if frame.topic == "stop":
                break
            if frame.topic in ("presence.join", "presence.leave"):
                print(frame.topic, frame.payload["username"], flush=True)
            else:
                print(f"{frame.offset} {frame.sender} {frame.topic}: {frame.payload}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:8000"))
