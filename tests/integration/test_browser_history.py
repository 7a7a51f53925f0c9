"""The demo page's use of protocol section 10 in headless Chromium against a real server: a
typing indicator on an ephemeral topic, the last 50 messages on join (a backlog), older
messages when scrolled to the top (`room.history`), the read-only announcements room, and the
example room classes `make serve` runs with."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.harness import RECV_TIMEOUT, ROOT, Client, ServerProcess
from tests.integration.test_browser import WAIT_S, Pages, browser, join, pages, publish, say

__all__ = ["browser", "pages"]  # the fixtures, shared with test_browser.py

StartServer = Callable[..., ServerProcess]
APP = "tests.integration.ephemeral_app"
EXAMPLE = os.path.join(ROOT, "examples", "roomcast.toml")


@pytest.fixture
def demo() -> Iterator[ServerProcess]:
    """The demo page on a server where `typing` is ephemeral in every room."""
    server = ServerProcess(["--port", "0", "--on-duplicate", "share"], module=APP)
    try:
        yield server.start()
    finally:
        server.stop()


def history(server: ServerProcess, room: str) -> list[dict[str, object]]:
    """The room's retained messages, as GET .../history lists them."""
    response = httpx.get(f"{server.url}/api/v1/rooms/{room}/history", timeout=RECV_TIMEOUT)
    return list(response.json()["messages"])


def test_typing_indicator_shows_who_types_and_is_never_stored(
    demo: ServerProcess, pages: Pages
) -> None:
    """While bob types, alice's page says so (bob's own does not); his message clears it;
    the typing frames take no offset and no place in history or in a backlog."""
    alice, bob = pages.open(), pages.open()
    join(alice, demo, "alice", "chat:typing")
    join(bob, demo, "bob", "chat:typing")
    expect(alice.locator("#typing")).to_be_hidden()
    bob.locator("#text").press_sequentially("hel")
    expect(alice.locator("#typing")).to_have_text("bob is typing…")
    expect(bob.locator("#typing")).to_be_hidden()
    bob.locator("#text").press_sequentially("lo")
    bob.press("#text", "Enter")
    expect(alice.locator(".msg .text")).to_have_text(["hello"])
    expect(alice.locator("#typing")).to_be_hidden()
    offsets = alice.locator(".msg").evaluate_all("items => items.map(i => i.dataset.offset)")
    assert offsets == ["1"]
    assert [m["topic"] for m in history(demo, "chat:typing")] == ["chat"]
    carol = pages.open()
    join(carol, demo, "carol", "chat:typing")
    expect(carol.locator(".msg .text")).to_have_text(["hello"])
    expect(carol.locator(".msg.other")).to_have_count(0)
    assert pages.errors == []


def test_join_shows_the_last_fifty_and_older_ones_on_scrolling_up(
    demo: ServerProcess, pages: Pages
) -> None:
    """A page joining a room with 70 messages shows the last 50 at once (the backlog);
    scrolled to the top it shows the 20 before them, in order, once each."""
    room = "chat:long"
    for n in range(70):
        publish(demo, room, f"m{n}")
    page = pages.open()
    join(page, demo, "dora", room)
    expect(page.locator(".msg")).to_have_count(50)
    expect(page.locator(".msg .text").first).to_have_text("m20")
    expect(page.locator(".msg .text").last).to_have_text("m69")
    page.locator("#messages").evaluate("list => { list.scrollTop = 0; }")
    expect(page.locator(".msg")).to_have_count(70)
    assert page.locator(".msg .text").all_text_contents() == [f"m{n}" for n in range(70)]
    offsets = page.locator(".msg").evaluate_all("items => items.map(i => i.dataset.offset)")
    assert offsets == [str(n) for n in range(1, 71)]
    say(page, "and now")
    expect(page.locator(".msg .text").last).to_have_text("and now")
    assert pages.errors == []


def test_the_announcements_room_is_read_only_on_the_page(demo: ServerProcess, pages: Pages) -> None:
    """The Announcements button joins `announce:news` on the same WebSocket: the page offers
    no composer there and shows what the server posts through the HTTP API; the first room
    keeps its composer."""
    page = pages.open()
    join(page, demo, "erin", "chat:ann")
    page.click("#announcements")
    expect(page.locator("#room-name")).to_have_text("announce:news")
    expect(page.locator("#text")).to_be_disabled()
    publish(demo, "announce:news", "release 1.1 is out")
    expect(page.locator(".msg .text")).to_have_text(["release 1.1 is out"])
    page.click(".room-entry[data-room='chat:ann']")
    expect(page.locator("#text")).to_be_enabled()
    assert pages.errors == []


def test_the_example_rooms_of_make_serve(start_server: StartServer, pages: Pages) -> None:
    """With examples/roomcast.toml, the file `make serve` passes: typing in a `chat:` room is
    ephemeral (the indicator shows, nothing is stored), and `announce:news` lists nobody,
    shows what the server posts and refuses a client's message (`forbidden`)."""
    server = start_server("--config", EXAMPLE, "--on-duplicate", "share")
    alice, bob = pages.open(), pages.open()
    join(alice, server, "alice", "chat:lobby")
    join(bob, server, "bob", "chat:lobby")
    bob.locator("#text").press_sequentially("hi")
    expect(alice.locator("#typing")).to_have_text("bob is typing…")
    assert history(server, "chat:lobby") == []
    alice.click("#announcements")
    expect(alice.locator("#text")).to_be_disabled()
    publish(server, "announce:news", "hello from the server")
    expect(alice.locator(".msg .text")).to_have_text(["hello from the server"])
    expect(alice.locator("#members li")).to_have_count(0)

    async def post() -> dict[str, Any]:
        client = await Client.connect(server.ws_url, "zed", "announce:news")
        await client.join()
        await client.send({"topic": "chat", "payload": {"text": "me too"}, "id": 1})
        answer = await client.recv()
        await client.close()
        return answer

    with ThreadPoolExecutor(1) as thread:  # Playwright's sync API holds this thread's loop
        answer = thread.submit(asyncio.run, post()).result(WAIT_S)
    assert answer["payload"]["code"] == "forbidden"
    assert pages.errors == []
