"""examples/proxy_backend.py as a real process behind a real server: tokens admit users with
their grants, a locked room and a long message are refused, a blocked word is masked, and
the webhooks it receives are signed."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from tests.harness import ROOT, Client, LogReader, ServerProcess

StartServer = Callable[..., ServerProcess]


@pytest.fixture
def example_backend() -> Iterator[tuple[str, LogReader]]:
    """`python examples/proxy_backend.py --port 0 --webhook-secret s3cret`: (URL, its log)."""
    proc = subprocess.Popen(
        [sys.executable, "examples/proxy_backend.py", "--port", "0", "--webhook-secret", "s3cret"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env={"PYTHONUNBUFFERED": "1"},
    )
    log = LogReader(proc.stdout)
    try:
        yield log.wait_for(r"backend listening on (http://\S+)").group(1), log
    finally:
        proc.kill()
        proc.wait(10)
        log.join(5)
        if proc.stdout is not None:
            proc.stdout.close()


async def test_the_example_backend_decides_and_receives(
    start_server: StartServer, example_backend: tuple[str, LogReader]
) -> None:
    """alice and bob get in with their tokens; no token is 4401, an unknown one 4403; bob
    cannot join a locked room; bob's "darn" reaches alice masked; alice cannot send a
    topic outside her grants; the backend receives member.joined, its signature checked."""
    url, log = example_backend
    server = start_server(
        "--proxy-connect-url",
        f"{url}/connect",
        "--proxy-join-url",
        f"{url}/join",
        "--proxy-publish-url",
        f"{url}/publish",
        "--webhook-url",
        f"{url}/webhook",
        "--webhook-secret",
        "s3cret",
    )
    alice = await Client.connect(server.ws_url, room="lobby", token="alice-token")
    assert (await alice.join())["payload"]["username"] == "alice"
    bob = await Client.connect(server.ws_url, room="lobby", token="bob-token")
    assert (await bob.join())["payload"]["username"] == "bob"
    for token, close_code in ((None, 4401), ("nobody", 4403)):
        params = {} if token is None else {"token": token}
        refused = await Client.connect(server.ws_url, room="lobby", **params)
        assert (await refused.closed())[0] == close_code
    await bob.send({"topic": "room.join", "payload": {"roomID": "locked-vault"}, "id": 1})
    assert (await bob.recv_topic("error"))["payload"]["code"] == "forbidden"
    await bob.send({"topic": "chat", "payload": {"text": "darn it"}, "id": 2})
    assert (await alice.recv_topic("chat"))["payload"] == {"text": "**** it"}
    await bob.send({"topic": "chat", "payload": {"text": "x" * 501}, "id": 3})
    assert (await bob.recv_topic("error"))["payload"]["code"] == "forbidden"
    await alice.send({"topic": "shout", "payload": {}, "id": 4})
    assert (await alice.recv_topic("error"))["payload"]["code"] == "forbidden"
    log.wait_for(r'event .*"type": "member.joined", "username": "bob"')
    await alice.close()
    await bob.close()
