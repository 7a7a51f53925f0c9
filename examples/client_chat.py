"""Two members chat through a running roomcast server: handlers, send, request, presence.

python examples/client_chat.py [ws://127.0.0.1:8000]
"""

import asyncio
import sys

from roomcast.client import Client, Frame, RequestError


async def main(url: str) -> None:
    done = asyncio.Event()

    async with Client(url, username="alice", room="lobby") as alice:

        @alice.on("chat")
        async def show(frame: Frame) -> None:
            text = frame.payload["text"]
            print(f"alice got {text!r} from {frame.sender} (offset {frame.offset})")
            if text == "bye":
                done.set()

        async with Client(url, username="bob", room="lobby") as bob:
            print("members:", sorted(await bob.presence()))
            offset = await bob.request("chat", {"text": "hi alice"})  # waits for the ack
            print("bob's message got offset", offset)
            await bob.send("chat", {"text": "just for you"}, to="alice")
            try:
                await bob.request("chat", {"text": "hello?"}, to="carol")
            except RequestError as exc:
                print("refused:", exc.wire_code)
            await bob.send("chat", {"text": "bye"})
            await asyncio.wait_for(done.wait(), 10)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:8000"))
