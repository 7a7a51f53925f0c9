"""`roomcast serve` and the garbage collector: connections leave no reference cycle behind
(each is freed when it ends, not by a full collection that walks every connection), nothing
keeps a closed connection's protocol objects, and the server runs with its own thresholds and
its startup objects frozen (server.py)."""

from __future__ import annotations

import asyncio
import re
import signal
import time

from roomcast.server import COLLECTOR_THRESHOLDS
from tests.harness import Client, ServerProcess

ROUNDS = 40


def probe(server: ServerProcess) -> re.Match[str]:
    """Ask the server for a full collection and what it found unreachable."""
    assert server.log is not None
    start = len(server.log.lines)
    server.signal(signal.SIGUSR1)
    return server.log.wait_for(
        r"gc\.probe garbage=(\d+) protocols=(\d+) threshold=(\S+) frozen=(\d+) types=(.*)",
        10,
        start,
    )


async def test_connections_leave_no_reference_cycle_behind() -> None:
    """Joins, messages, acks, leaves, refused connections (a bad parameter, a duplicate):
    what they leave unreachable is freed as it goes, so a full collection finds (almost)
    nothing; with one cycle per connection it would find dozens of objects per connection."""
    server = ServerProcess(["--port", "0"], module="tests.integration.gc_probe").start()
    try:
        probe(server)  # what the startup left
        for i in range(ROUNDS):
            room = f"gc-{i}"
            alice = await Client.connect(server.ws_url, "alice", room)
            await alice.join()
            bob = await Client.connect(server.ws_url, "bob", room)
            await bob.join()
            await alice.send({"topic": "chat", "payload": i, "id": 1})
            assert (await bob.recv_topic("chat"))["payload"] == i
            assert (await alice.recv_topic("ack"))["payload"]["id"] == 1
            refused = await Client.connect(server.ws_url, "", room)
            assert (await refused.closed())[0] == 4400
            duplicate = await Client.connect(server.ws_url, "bob", room)
            assert (await duplicate.closed())[0] == 4409
            await alice.close()
            await bob.close()
        # The last leaves are handled once a new connection is welcomed after them.
        last = await Client.connect(server.ws_url, "carol", "gc-0")
        await last.join()
        await last.close()
        # The server ends a connection a moment after the client saw it closed: probe until
        # none is left (bounded), adding up what each probe found unreachable.
        garbage, kinds = 0, []
        deadline = time.monotonic() + 10
        while True:
            found = probe(server)
            garbage += int(found.group(1))
            kinds.append(found.group(5))
            if int(found.group(2)) == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert garbage < ROUNDS, f"{garbage} objects in reference cycles: {kinds}"
        # Every socket is closed: no protocol object outlives its connection.
        assert int(found.group(2)) == 0
        assert found.group(3) == ",".join(map(str, COLLECTOR_THRESHOLDS))
        assert int(found.group(4)) > 0
    finally:
        server.stop()
