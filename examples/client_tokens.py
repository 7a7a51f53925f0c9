"""A client of a server that requires JWTs, with a token provider that mints short tokens.

    roomcast serve --jwt-secret "$SECRET"
    ROOMCAST_JWT_SECRET="$SECRET" python examples/client_tokens.py [ws://127.0.0.1:8000]

A real application fetches tokens from its own backend; minting them here keeps the example
self-contained. The provider is called for the first connection, in-band before each token
expires (`auth.refresh`), and again whenever the server answers 4401.
"""

import asyncio
import os
import sys
import time

import jwt

from roomcast.client import Client


async def main(url: str) -> None:
    secret = os.environ["ROOMCAST_JWT_SECRET"]
    issued = 0

    async def token_provider() -> str:
        nonlocal issued
        issued += 1
        claims = {"sub": "alice", "rooms": ["lobby"], "exp": int(time.time()) + 3}
        return jwt.encode(claims, secret, algorithm="HS256")

    async with Client(url, username="alice", room="lobby", token_provider=token_provider) as c:
        await asyncio.sleep(3.5)  # outlive the first token: the client refreshes it in-band
        print("still connected:", c.connected, "- tokens issued:", issued)
        print("offset:", await c.request("chat", {"text": "fresh token, same connection"}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:8000"))
