"""The demo page as a multi-room chat (protocol v1.1) in headless Chromium against real
servers: rooms on one WebSocket with unread counts and presence per room, a second tab of the
same user under the share policy, and every room recovered across a server restart."""

from __future__ import annotations

from collections.abc import Callable

from playwright.sync_api import Page, expect

from tests.harness import RedisProcess, ServerProcess
from tests.integration.test_browser import Pages, browser, join, pages, publish, say

__all__ = ["browser", "pages"]  # the fixtures, shared with test_browser.py

StartServer = Callable[..., ServerProcess]
SHARE = ("--on-duplicate", "share")


def add_room(page: Page, room: str) -> None:
    """Join one more room from the room list and wait until it is shown."""
    page.fill("#new-room", room)
    page.press("#new-room", "Enter")
    expect(page.locator(".room-list li.active .room-entry")).to_have_attribute("data-room", room)
    expect(page.locator(".notice.joined")).to_have_count(1)


def open_room(page: Page, room: str) -> None:
    page.click(f".room-entry[data-room='{room}']")
    expect(page.locator("#room-name")).to_have_text(room)


def room_texts(page: Page, room: str) -> list[str]:
    open_room(page, room)
    return page.locator(".msg .text").all_text_contents()


def test_two_users_in_two_rooms_each_on_one_websocket(
    start_server: StartServer, pages: Pages
) -> None:
    """alice is in one and two, bob in two and three, each on one WebSocket: a message lands
    only in its room, a room not on screen counts its unread messages, and each room lists
    its own members."""
    server = start_server(*SHARE)
    alice, bob = pages.open(), pages.open()
    sockets: dict[str, list[str]] = {"alice": [], "bob": []}
    alice.on("websocket", lambda ws: sockets["alice"].append(ws.url))
    bob.on("websocket", lambda ws: sockets["bob"].append(ws.url))
    join(alice, server, "alice", "one")
    add_room(alice, "two")
    join(bob, server, "bob", "two")
    add_room(bob, "three")
    expect(alice.locator(".room-entry")).to_have_text(["one", "two"])
    open_room(alice, "one")

    say(bob, "bob in three")
    open_room(bob, "two")
    say(bob, "bob in two")
    expect(bob.locator(".msg .text")).to_have_text(["bob in two"])
    expect(alice.locator(".room-entry[data-room='two'] .unread")).to_have_text("1")
    say(alice, "alice in one")
    expect(alice.locator(".msg .text")).to_have_text(["alice in one"])
    expect(alice.locator("#members li")).to_have_text(["alice"])
    open_room(alice, "two")
    expect(alice.locator(".room-entry[data-room='two'] .unread")).to_be_hidden()
    expect(alice.locator(".msg .text")).to_have_text(["bob in two"])
    expect(alice.locator("#members li")).to_have_text(["alice", "bob"])
    say(alice, "alice in two")

    expect(bob.locator(".msg .text")).to_have_text(["bob in two", "alice in two"])
    assert room_texts(bob, "three") == ["bob in three"]
    expect(bob.locator("#members li")).to_have_text(["bob"])
    assert room_texts(alice, "one") == ["alice in one"]
    assert len(sockets["alice"]) == 1, sockets
    assert len(sockets["bob"]) == 1, sockets
    assert pages.errors == []


def test_a_second_tab_of_the_same_user_works(start_server: StartServer, pages: Pages) -> None:
    """Under the share policy, a second tab of alice joins as alice: both tabs send and
    receive, the room lists alice once, and closing one tab does not make her leave."""
    server = start_server(*SHARE)
    first = pages.open()
    join(first, server, "alice", "tabs")
    second = first.context.new_page()
    second.goto(server.url + "/?room=tabs")
    expect(second.locator("#username")).to_have_value("alice")
    second.click("#join-button")
    expect(second.locator("#status")).to_have_attribute("data-status", "connected")
    bob = pages.open()
    join(bob, server, "bob", "tabs")
    say(second, "from the second tab")
    say(first, "from the first tab")
    for page in (first, second, bob):
        expect(page.locator(".msg .text")).to_have_text(
            ["from the second tab", "from the first tab"]
        )
        expect(page.locator("#members li")).to_have_text(["alice", "bob"])
    second.close()
    say(bob, "still there?")
    expect(first.locator(".msg .text").last).to_have_text("still there?")
    expect(bob.locator("#members li")).to_have_text(["alice", "bob"])
    assert "alice left" not in bob.locator(".notice").all_text_contents()
    assert pages.errors == []


def test_a_server_restart_recovers_every_room(
    start_server: StartServer, redis_server: RedisProcess, pages: Pages
) -> None:
    """With Redis, the page's node stops while another node publishes to each of its rooms;
    the page comes back and every room shows its messages once, in order."""
    flags = ("--broker", redis_server.url, *SHARE)
    node = start_server(*flags)
    other = start_server(*flags)
    page = pages.open()
    join(page, node, "alice", "r-one")
    add_room(page, "r-two")
    publish(other, "r-one", "1a")
    publish(other, "r-two", "2a")
    expect(page.locator(".msg .text")).to_have_text(["2a"])

    node.stop()
    expect(page.locator("#status")).to_have_attribute("data-status", "reconnecting")
    publish(other, "r-one", "1b")
    publish(other, "r-two", "2b")
    publish(other, "r-two", "2c")
    start_server("--port", str(node.port), *flags)
    expect(page.locator("#status")).to_have_attribute("data-status", "recovered")
    expect(page.locator(".msg .text")).to_have_text(["2a", "2b", "2c"])
    expect(page.locator(".room-entry[data-room='r-one'] .unread")).to_have_text("2")
    assert room_texts(page, "r-one") == ["1a", "1b"]
    for room in ("r-one", "r-two"):
        open_room(page, room)
        assert page.locator(".notice.reset").count() == 0
        offsets = page.locator(".msg").evaluate_all("items => items.map(i => i.dataset.offset)")
        assert offsets == [str(n) for n in range(1, len(offsets) + 1)], (room, offsets)
    assert pages.errors == []
