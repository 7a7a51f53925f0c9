"""The admin page in headless Chromium (Debian's /usr/bin/chromium) against a two-node Redis
cluster: signing in with the API key, both nodes live, a room's members and live tail,
kicking and publishing, a dead node dropping out; refused without the key."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from playwright.sync_api import Page, expect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.harness import RECV_TIMEOUT, RedisProcess, ServerProcess
from tests.integration.test_browser import Pages, browser, pages  # noqa: F401 (fixtures)

StartServer = Callable[..., ServerProcess]
KEY = "browser-admin-key-0123456789"


class Member:
    """A plain WebSocket member (blocking client) of one room."""

    def __init__(self, stack: contextlib.ExitStack, server: ServerProcess, name: str, room: str):
        url = f"{server.ws_url}?username={name}&roomID={room}"
        self.ws: ClientConnection = stack.enter_context(connect(url, open_timeout=RECV_TIMEOUT))
        assert self.recv()["topic"] == "welcome"

    def recv(self) -> dict[str, Any]:
        frame: dict[str, Any] = json.loads(self.ws.recv(timeout=RECV_TIMEOUT))
        return frame

    def recv_topic(self, topic: str) -> dict[str, Any]:
        for _ in range(100):
            frame = self.recv()
            if frame["topic"] == topic:
                return frame
        raise AssertionError(f"no {topic} frame")

    def send(self, frame: dict[str, Any]) -> None:
        self.ws.send(json.dumps(frame))

    def close_code(self) -> int | None:
        """Read until the server closes the connection; its close code."""
        with contextlib.suppress(ConnectionClosed):
            for _ in range(100):
                self.recv()
        return self.ws.close_code


@pytest.fixture
def members() -> Iterator[contextlib.ExitStack]:
    """Where a test's members are opened; they are closed at its end."""
    with contextlib.ExitStack() as stack:
        yield stack


def sign_in(page: Page, server: ServerProcess, key: str) -> None:
    page.goto(server.url + "/admin")
    expect(page.locator("#login-view")).to_be_visible()
    page.fill("#key", key)
    page.press("#key", "Enter")


def test_admin_page_watches_and_acts_on_a_redis_cluster(
    start_server: StartServer,
    redis_server: RedisProcess,
    pages: Pages,  # noqa: F811
    members: contextlib.ExitStack,
    room: str,
) -> None:
    """Signed in on node a, the page shows both nodes with their connections, a room's
    members and a message sent on node b in its live tail; kicking closes the member with
    4499 and publishing reaches the room, each with the API's answer; a killed node leaves
    the list within the presence bound."""
    flags = ("--broker", redis_server.url, "--api-key", KEY, "--presence-ttl", "3")
    node_a = start_server("--node-id", "node-a", *flags)
    node_b = start_server("--node-id", "node-b", *flags)
    bob = Member(members, node_b, "bob", room)
    carol = Member(members, node_b, "carol", room)
    Member(members, node_a, "dave", room + "-other")

    page = pages.open()
    sign_in(page, node_a, KEY)
    expect(page.locator("#status")).to_have_attribute("data-status", "connected")
    expect(page.locator("#served-by")).to_have_text("served by node-a")
    expect(page.locator("#nodes tbody tr")).to_have_count(2)
    expect(page.locator('#nodes tr[data-node="node-a"] .connections')).to_have_text("1")
    expect(page.locator('#nodes tr[data-node="node-b"] .connections')).to_have_text("2")

    page.locator(f'#rooms tr[data-room="{room}"] button').click()
    expect(page.locator("#room-name")).to_have_text(room)
    expect(page.locator("#members li span")).to_have_text(["bob", "carol"])

    carol.send({"topic": "chat", "payload": {"text": "hello from node b"}})
    tail = page.locator("#tail .msg")
    expect(tail.last.locator(".from")).to_have_text("carol")
    expect(tail.last.locator(".payload")).to_have_text('{"text":"hello from node b"}')

    page.locator('#members li[data-member="bob"] button.kick').click()
    expect(page.locator("#action-result")).to_have_text("kicked bob: 204")
    assert bob.close_code() == 4499
    expect(page.locator("#members li span")).to_have_text(["carol"])

    page.fill("#pub-payload", '{"text": "maintenance at noon"}')
    page.click("#publish-form button")
    expect(page.locator("#action-result")).to_have_text("published at offset 2: 202")
    announced = carol.recv_topic("announcement")
    assert announced["payload"] == {"text": "maintenance at noon"}
    assert announced["from"] == "$server"
    expect(tail.last.locator(".from")).to_have_text("$server")

    node_b.kill()
    expect(page.locator("#nodes tbody tr")).to_have_count(1, timeout=10_000)
    expect(page.locator("#nodes tbody tr .name")).to_have_text("node-a")
    assert pages.errors == []


def test_admin_page_refuses_a_wrong_key(start_server: StartServer, pages: Pages) -> None:  # noqa: F811
    """A wrong key keeps the page on the sign-in form, with the reason, and shows nothing."""
    server = start_server("--api-key", KEY)
    page = pages.open()
    sign_in(page, server, "not-the-key")
    expect(page.locator("#login-error")).to_have_text("The API key was refused.")
    expect(page.locator("#dashboard")).to_be_hidden()
    expect(page.locator("#status")).to_have_attribute("data-status", "idle")
    sign_in(page, server, KEY)
    expect(page.locator("#status")).to_have_attribute("data-status", "connected")
    expect(page.locator("#nodes tbody tr")).to_have_count(1)
    assert pages.errors == []
