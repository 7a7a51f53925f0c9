"""Exactly-once publish across reconnects (docs/protocol.md, section 10): the TCP connection
of a client is cut between its publish and the publish's ack, many times, and every member
still gets each message exactly once, in order, each under one offset.

A proxy on 127.0.0.1 (cutting_proxy.py) stands between the sending client and the server:
it cuts after forwarding some of the client's frames, and instead of forwarding some acks.
On redis:// each new connection of the sender goes to the other node in turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest

from roomcast.client import Backoff, Client, Frame
from tests.harness import ROOT, RedisProcess
from tests.integration.cutting_proxy import CuttingProxy, every
from tests.integration.rooms_support import Pair, RoomsClient, Start, connect

MESSAGES = 40
BATCH = 4
"""Requests in flight at once: a cut leaves several unanswered, resent in order."""
WAIT = 60.0


@pytest.fixture
async def proxy(pair: Pair) -> AsyncIterator[CuttingProxy]:
    """A proxy to the pair's nodes that cuts after every 5th keyed frame and instead of every
    3rd ack."""
    targets = [pair.a.port] if pair.kind == "memory" else [pair.a.port, pair.b.port]
    async with CuttingProxy(targets, cut_after_publish=every(5), cut_before_ack=every(3)) as p:
        yield p


async def observe(client: RoomsClient, count: int) -> list[dict[str, Any]]:
    """The first `count` chat messages a member receives, and that no other chat message is
    queued after them (the pong of a ping sent then comes before any later frame)."""
    async with asyncio.timeout(WAIT):
        messages = [await client.recv_topic("chat", WAIT) for _ in range(count)]
        await client.send({"topic": "ping", "payload": "barrier"})
        while (frame := await client.recv(WAIT))["topic"] != "pong":
            assert frame["topic"] != "chat", frame
    return messages


def assert_exactly_once(messages: list[dict[str, Any]]) -> None:
    """Message n has offset n + 1: each published once, in the order sent."""
    assert [(m["offset"], m["payload"]["n"]) for m in messages] == [
        (n + 1, n) for n in range(MESSAGES)
    ]


async def test_python_client_publishes_each_message_once(
    pair: Pair, proxy: CuttingProxy, room: str
) -> None:
    """Requests of the Python client across many cut connections: every ack's offset is the
    message's one offset, and every member (the sender included) gets each message once."""
    watchers = [await connect(pair.a, "w1", room), await connect(pair.b, "w2", room)]
    seen: list[Frame] = []
    sender = Client(
        proxy.url,
        username="sender",
        room=room,
        backoff=Backoff(min_delay=0.01, max_delay=0.05, jitter=0.01),
    )
    sender.on("chat")(seen.append)
    await sender.connect()
    try:
        offsets: list[int | None] = []
        for start in range(0, MESSAGES, BATCH):
            offsets += await asyncio.gather(
                *(
                    sender.request("chat", {"n": n}, timeout=WAIT)
                    for n in range(start, start + BATCH)
                )
            )
        assert offsets == list(range(1, MESSAGES + 1))
        for watcher in watchers:
            assert_exactly_once(await observe(watcher, MESSAGES))
        async with asyncio.timeout(WAIT):
            while len(seen) < MESSAGES:
                await sender.request("ping", "sync", timeout=WAIT)
        assert [(f.offset, f.payload["n"]) for f in seen] == [(n + 1, n) for n in range(MESSAGES)]
    finally:
        await sender.close()
        for watcher in watchers:
            await watcher.close()
    assert proxy.cuts >= MESSAGES // 5, "the proxy cut too rarely to test anything"
    assert proxy.connections > proxy.cuts


JS_SENDER = """
import WebSocket from "ws";
import { Client } from "./dist/index.js";

const [url, room, count, batch] = process.argv.slice(-4);
const seen = [];
const client = new Client({ url, username: "sender", room, WebSocket, minDelay: 10, maxDelay: 50,
                            requestTimeout: 60000 });
client.on("chat", (m) => seen.push([m.offset, m.payload.n]));
await client.ready;
const offsets = [];
for (let start = 0; start < Number(count); start += Number(batch)) {
  const round = [];
  for (let n = start; n < start + Number(batch); n++) round.push(client.request("chat", { n }));
  offsets.push(...(await Promise.all(round)));
}
const deadline = Date.now() + 60000;
while (seen.length < Number(count) && Date.now() < deadline) await client.request("ping", "sync");
client.close();
console.log(JSON.stringify({ offsets, seen }));
"""


async def test_typescript_client_publishes_each_message_once(
    pair: Pair, proxy: CuttingProxy, room: str
) -> None:
    """The same with the TypeScript client in Node (the `ws` package)."""
    node = shutil.which("node")
    assert node is not None, "Node 20 is required: run scripts/setup.sh --test"
    js = os.path.join(ROOT, "clients", "js")
    watchers = [await connect(pair.a, "w1", room), await connect(pair.b, "w2", room)]
    try:
        process = await asyncio.create_subprocess_exec(
            node,
            "--input-type=module",
            "--eval",
            JS_SENDER,
            proxy.url,
            room,
            str(MESSAGES),
            str(BATCH),
            cwd=js,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(2 * WAIT):
                out, err = await process.communicate()
        finally:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        assert process.returncode == 0, err.decode()[-3000:]
        result = json.loads(out.decode().strip().splitlines()[-1])
        assert result["offsets"] == list(range(1, MESSAGES + 1))
        assert result["seen"] == [[n + 1, n] for n in range(MESSAGES)]
        for watcher in watchers:
            assert_exactly_once(await observe(watcher, MESSAGES))
    finally:
        for watcher in watchers:
            await watcher.close()
    assert proxy.cuts >= MESSAGES // 5, "the proxy cut too rarely to test anything"


async def test_a_publish_answered_timeout_is_published_once(
    start_server: Start, redis_server: RedisProcess, room: str
) -> None:
    """Redis freezes (SIGSTOP) with a publish in it: the server answers `timeout`, the Python
    client sends the frame again (through the `unavailable` answers while Redis stays down),
    and once Redis resumes the request returns the message's one offset."""
    a = start_server("--broker", redis_server.url, "--node-id", "a", "--presence-ttl", "3")
    watcher = await connect(a, "watcher", room)
    sender = Client(
        a.ws_url, username="sender", room=room, backoff=Backoff(min_delay=0.05, max_delay=0.5)
    )
    await sender.connect()
    proc = redis_server.proc
    assert proc is not None
    assert a.log is not None
    try:
        assert await sender.request("chat", {"n": 0}) == 1  # Redis has the script
        proc.send_signal(signal.SIGSTOP)
        try:
            request = asyncio.ensure_future(sender.request("chat", {"n": 1}, timeout=WAIT))
            await asyncio.to_thread(a.log.wait_for, r"frame\.rejected .*code=timeout", 20)
        finally:
            proc.send_signal(signal.SIGCONT)
        assert await request == 2
        messages = await observe(watcher, 2)
        assert [(m["offset"], m["payload"]["n"]) for m in messages] == [(1, 0), (2, 1)]
    finally:
        await sender.close()
        await watcher.close()
