"""The demo chat page in headless Chromium (Debian's /usr/bin/chromium) against real servers:
chatting, room isolation, a phone-sized window, and reconnecting across a server restart."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
from collections.abc import Callable, Iterator

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, ViewportSize, expect, sync_playwright

from tests.harness import RECV_TIMEOUT, RedisProcess, ServerProcess
from tests.integration.client_support import Proxy

StartServer = Callable[..., ServerProcess]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 10_000
WAIT_S = WAIT_MS / 1000
expect.set_options(timeout=WAIT_MS)
PHONE: ViewportSize = {"width": 390, "height": 844}
LAPTOP: ViewportSize = {"width": 1280, "height": 800}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the module; each test opens its own pages."""
    assert os.path.exists(CHROMIUM), "Chromium is missing: run scripts/setup.sh --test"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Pages:
    """Opens pages in fresh browser contexts (separate storage, like separate people) and
    collects the script errors of all of them."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.contexts: list[BrowserContext] = []
        self.errors: list[str] = []

    def open(self, viewport: ViewportSize = LAPTOP) -> Page:
        context = self.browser.new_context(viewport=viewport)
        context.set_default_timeout(WAIT_MS)
        self.contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        return page


@pytest.fixture
def pages(browser: Browser) -> Iterator[Pages]:
    """Pages for one test, closed at its end."""
    opened = Pages(browser)
    yield opened
    for context in opened.contexts:
        context.close()


def join(page: Page, server: ServerProcess, username: str, room: str) -> None:
    """Open the demo, fill the join form and wait until connected."""
    page.goto(server.url + "/")
    page.fill("#username", username)
    page.fill("#room", room)
    page.press("#room", "Enter")
    expect(page.locator("#status")).to_have_attribute("data-status", "connected")
    expect(page.locator("#chat-view")).to_be_visible()


def say(page: Page, text: str) -> None:
    """Type a message and press Enter."""
    page.fill("#text", text)
    page.press("#text", "Enter")


def texts(page: Page) -> list[str]:
    """The message texts the page shows, in order."""
    return page.locator(".msg .text").all_text_contents()


def publish(
    server: ServerProcess, room: str, text: str, topic: str = "chat", **extra: object
) -> int:
    """Publish a message through the HTTP API."""
    response = httpx.post(
        f"{server.url}/api/v1/rooms/{room}/messages",
        json={"topic": topic, "payload": {"text": text, **extra}},
        timeout=RECV_TIMEOUT,
    )
    assert response.status_code == 202, response.text
    return int(response.json()["offset"])


def test_two_pages_chat_and_another_room_sees_nothing(server: ServerProcess, pages: Pages) -> None:
    """Two pages in one room see each other's messages with sender and time, and the member
    list live; a page in another room sees none of it; user text is shown as text."""
    alice = pages.open()
    bob = pages.open(PHONE)
    carol = pages.open()
    join(alice, server, "alice", "r1")
    join(bob, server, "bob", "r1")
    join(carol, server, "carol", "r2")
    expect(alice.locator("#members li")).to_have_text(["alice", "bob"])
    expect(bob.locator("#members li")).to_have_text(["alice", "bob"])

    say(alice, "hello <b>bob</b>")
    say(bob, "hi alice")
    for page in (alice, bob):
        expect(page.locator(".msg .text")).to_have_text(["hello <b>bob</b>", "hi alice"])
        expect(page.locator(".msg .from")).to_have_text(["alice", "bob"])
        expect(page.locator(".msg time").first).to_have_text(re.compile(r"\d\d:\d\d"))
        assert page.locator(".msg b").count() == 0
    expect(alice.locator(".msg.mine .text")).to_have_text(["hello <b>bob</b>"])

    # r2 hears its own message after everything said in r1, and nothing else
    say(carol, "anyone?")
    expect(carol.locator(".msg .text")).to_have_text(["anyone?"])
    expect(carol.locator("#members li")).to_have_text(["carol"])
    assert texts(carol) == ["anyone?"]

    bob.close()
    expect(alice.locator("#members li")).to_have_text(["alice"])
    expect(alice.locator(".notice").last).to_have_text("bob left")
    assert pages.errors == []


def test_phone_sized_window_fits(server: ServerProcess, pages: Pages) -> None:
    """At 390x844 the page has no sideways scroll, and the composer and members stay on screen."""
    page = pages.open(PHONE)
    join(page, server, "pat", "small")
    say(page, "a-long-word-without-spaces-" * 8)
    expect(page.locator(".msg")).to_have_count(1)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], width
    for selector in ("#text", "#members", "#status"):
        box = page.locator(selector).bounding_box()
        assert box is not None, selector
        assert box["y"] >= 0, (selector, box)
        assert box["y"] + box["height"] <= PHONE["height"], (selector, box)
        assert box["x"] + box["width"] <= PHONE["width"], (selector, box)


def test_a_taken_name_is_refused_on_the_form(server: ServerProcess, pages: Pages) -> None:
    """Joining with a name already in the room shows why on the join form."""
    join(pages.open(), server, "sam", "r1")
    page = pages.open()
    page.goto(server.url + "/")
    page.fill("#username", "sam")
    page.fill("#room", "r1")
    page.click("#join-form button")
    expect(page.locator("#join-error")).to_contain_text("already taken")
    expect(page.locator("#join-view")).to_be_visible()


def test_page_recovers_every_message_across_a_server_restart(
    start_server: StartServer, redis_server: RedisProcess, pages: Pages
) -> None:
    """With Redis, the page's server stops while another node publishes; the page shows
    reconnecting, then recovered, with every message once, in order."""
    node = start_server("--broker", redis_server.url)
    other = start_server("--broker", redis_server.url)
    page = pages.open()
    join(page, node, "alice", "ops")
    publish(other, "ops", "m1")
    expect(page.locator(".msg .text")).to_have_text(["m1"])

    node.stop()
    expect(page.locator("#status")).to_have_attribute("data-status", "reconnecting")
    publish(other, "ops", "m2")
    publish(other, "ops", "m3")
    start_server("--port", str(node.port), "--broker", redis_server.url)
    expect(page.locator("#status")).to_have_attribute("data-status", "recovered")
    expect(page.locator(".notice.recovered")).to_have_count(1)
    publish(other, "ops", "m4")
    expect(page.locator(".msg .text")).to_have_text(["m1", "m2", "m3", "m4"])
    offsets = page.locator(".msg").evaluate_all("items => items.map(i => i.dataset.offset)")
    assert offsets == ["1", "2", "3", "4"]
    assert pages.errors == []


def test_page_reports_lost_history_after_a_memory_server_restart(
    start_server: StartServer, pages: Pages
) -> None:
    """A memory-broker server loses history on restart: the page reconnects, says messages
    could not be recovered, and shows what is published after."""
    first = start_server()
    page = pages.open()
    join(page, first, "alice", "r1")
    publish(first, "r1", "before")
    expect(page.locator(".msg .text")).to_have_text(["before"])
    first.stop()
    expect(page.locator("#status")).to_have_attribute("data-status", "reconnecting")
    second = start_server("--port", str(first.port))
    expect(page.locator("#status")).to_have_attribute("data-status", "connected")
    # nothing was sent since the restart: the page lost nothing it had not seen
    expect(page.locator(".notice.restarted")).to_have_text("Reconnected: the server restarted.")
    assert page.locator(".notice.reset").count() == 0
    publish(second, "r1", "after")
    expect(page.locator(".msg .text")).to_have_text(["before", "after"])


def members(server: ServerProcess, room: str) -> list[str]:
    """The room's members as the HTTP API lists them."""
    response = httpx.get(f"{server.url}/api/v1/rooms/{room}/members", timeout=RECV_TIMEOUT)
    return list(response.json()["members"])


@contextlib.contextmanager
def proxy_to(server: ServerProcess) -> Iterator[tuple[str, Callable[[], None]]]:
    """A TCP proxy in front of `server` (run on its own event loop thread); yields its HTTP
    URL and a function that freezes the connections open now (a network that went dead)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    proxy = asyncio.run_coroutine_threadsafe(Proxy(server.port).start(), loop).result(WAIT_S)

    async def freeze() -> None:
        proxy.freeze(websockets_only=True)

    async def close() -> None:
        await proxy.close()
        # end the relays still running, so that every socket is closed before the loop is
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0)  # the aborted transports close on the next iteration

    try:
        yield (
            f"http://127.0.0.1:{proxy.port}",
            lambda: asyncio.run_coroutine_threadsafe(freeze(), loop).result(WAIT_S),
        )
    finally:
        asyncio.run_coroutine_threadsafe(close(), loop).result(WAIT_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(WAIT_S)
        loop.close()


def test_double_click_on_join_joins_once(server: ServerProcess, pages: Pages) -> None:
    """Join clicked twice makes one connection: the page joins, with no refusal of its own
    name, and the room lists the name once."""
    page = pages.open()
    page.goto(server.url + "/")
    page.fill("#username", "dora")
    page.fill("#room", "dbl")
    page.dblclick("#join-button")
    expect(page.locator("#status")).to_have_attribute("data-status", "connected")
    expect(page.locator("#members li")).to_have_text(["dora"])
    assert members(server, "dbl") == ["dora"]
    say(page, "still here")
    expect(page.locator(".msg .text")).to_have_text(["still here"])
    assert page.locator("#join-error").is_hidden()
    assert pages.errors == []


def test_reload_after_a_dead_network_gets_back_in_at_once(
    server: ServerProcess, pages: Pages
) -> None:
    """A page whose connection went dead (the server still counts it present) is reloaded:
    it resumes its room with the offset and epoch it kept, takes its name over at once, and
    shows the room's messages again."""
    with proxy_to(server) as (url, freeze):
        page = pages.open()
        page.goto(url + "/")
        page.fill("#username", "rita")
        page.fill("#room", "reload")
        page.press("#room", "Enter")
        expect(page.locator("#status")).to_have_attribute("data-status", "connected")
        publish(server, "reload", "before")
        expect(page.locator(".msg .text")).to_have_text(["before"])
        freeze()
        publish(server, "reload", "while frozen")
        page.reload()
        expect(page.locator("#status")).to_have_attribute("data-status", "recovered")
        expect(page.locator(".msg .text")).to_have_text(["before", "while frozen"])
        assert members(server, "reload") == ["rita"]
        say(page, "back")
        expect(page.locator(".msg .text")).to_have_text(["before", "while frozen", "back"])
    assert pages.errors == []


def test_a_second_tab_of_the_same_browser_joins(server: ServerProcess, pages: Pages) -> None:
    """Without the share policy, the hint's second tab, refused the name the first tab holds
    in the room, is offered another one at once: it joins under it, and both tabs chat."""
    first = pages.open()
    join(first, server, "tom", "tabs")
    second = first.context.new_page()
    second.goto(server.url + "/?room=tabs")
    expect(second.locator("#username")).to_have_value("tom")
    second.click("#join-button")
    expect(second.locator("#join-error")).to_contain_text("already taken")
    expect(second.locator("#username")).to_have_value("tom-2")
    expect(second.locator("#join-hint")).to_contain_text("tom is in this room in another tab")
    second.click("#join-button")
    expect(second.locator("#status")).to_have_attribute("data-status", "connected")
    say(second, "from the second tab")
    for page in (first, second):
        expect(page.locator("#members li")).to_have_text(["tom", "tom-2"])
        expect(page.locator(".msg .text")).to_have_text(["from the second tab"])
    assert pages.errors == []


def test_a_replaced_tab_says_so_once_and_stops(start_server: StartServer, pages: Pages) -> None:
    """Under --on-duplicate replace, the older page says it was joined from elsewhere (not
    "already taken"), in one notice; its member list empties and Send is disabled."""
    node = start_server("--on-duplicate", "replace")
    old = pages.open()
    join(old, node, "una", "rep")
    join(pages.open(), node, "una", "rep")
    expect(old.locator("#status")).to_have_attribute("data-status", "closed")
    expect(old.locator("#status")).to_have_text(
        "disconnected: you joined from another tab or device"
    )
    expect(old.locator(".notice.closed")).to_have_count(1)
    assert old.locator(".notice.error").count() == 0
    assert "already taken" not in old.locator("body").inner_text()
    expect(old.locator("#members li")).to_have_count(0)
    expect(old.locator("#send")).to_be_disabled()
    expect(old.locator("#text")).to_be_disabled()


def test_a_kicked_page_says_so_once(server: ServerProcess, pages: Pages) -> None:
    """A kick through the HTTP API: one notice, no member listed, Send disabled."""
    page = pages.open()
    join(page, server, "ken", "kick")
    response = httpx.delete(f"{server.url}/api/v1/rooms/kick/members/ken", timeout=RECV_TIMEOUT)
    assert response.status_code == 204
    expect(page.locator("#status")).to_have_text("disconnected: you were removed from the room")
    expect(page.locator(".notice.closed")).to_have_count(1)
    assert page.locator(".notice.error").count() == 0
    expect(page.locator("#members li")).to_have_count(0)
    expect(page.locator("#send")).to_be_disabled()


def test_peers_see_who_is_back_after_a_restart(start_server: StartServer, pages: Pages) -> None:
    """After a server restart, a page's notices end in agreement with its member list: no
    "alice left" last for an alice who is listed."""
    first = start_server()
    alice, bob = pages.open(), pages.open()
    join(alice, first, "alice", "back")
    join(bob, first, "bob", "back")
    expect(bob.locator("#members li")).to_have_text(["alice", "bob"])
    first.stop()
    expect(bob.locator("#status")).to_have_attribute("data-status", "reconnecting")
    start_server("--port", str(first.port))
    for page in (alice, bob):
        expect(page.locator("#status")).to_have_attribute("data-status", "connected")
        expect(page.locator("#members li")).to_have_text(["alice", "bob"])
        expect(page.locator(".notice.reset")).to_have_count(0)
    about_alice = [t for t in bob.locator(".notice").all_text_contents() if "alice" in t]
    assert not about_alice or about_alice[-1] == "alice joined", about_alice


def test_a_late_joiner_sees_history_other_topics_and_sent_times(
    server: ServerProcess, pages: Pages
) -> None:
    """A page joining later shows the room's earlier messages, says it joined, shows a topic
    other than chat, and dates a message by the sender's clock when it carries one."""
    alice = pages.open()
    join(alice, server, "alice", "late")
    say(alice, "one")
    say(alice, "two")
    expect(alice.locator(".msg .text")).to_have_text(["one", "two"])
    sent = 1_700_000_000_000  # long ago: not the arrival time
    publish(server, "late", "dated", at=sent)
    bob = pages.open()
    join(bob, server, "bob", "late")
    expect(bob.locator(".msg .text")).to_have_text(["one", "two", "dated"])
    expect(bob.locator(".notice.joined")).to_have_text("You joined late as bob.")
    expected = bob.evaluate(
        "at => new Date(at).toLocaleTimeString([], {hour: '2-digit', minute: '2-digit'})", sent
    )
    expect(bob.locator(".msg time").nth(2)).to_have_text(expected)
    publish(server, "late", "the README's example", topic="announce")
    for page in (alice, bob):
        expect(page.locator(".msg.other .topic")).to_have_text(["announce"])
        expect(page.locator(".msg.other .text")).to_contain_text("the README's example")
    assert pages.errors == []


def test_join_with_the_server_down_says_so(start_server: StartServer, pages: Pages) -> None:
    """With the server gone, Join shows an error on the form instead of connecting forever."""
    node = start_server()
    page = pages.open()
    page.goto(node.url + "/")
    node.stop()
    page.fill("#username", "sid")
    page.click("#join-button")
    expect(page.locator("#join-error")).to_have_text(
        "Could not join: the server cannot be reached."
    )
    expect(page.locator("#join-view")).to_be_visible()
    expect(page.locator("#join-button")).to_be_enabled()
    expect(page.locator("#status")).to_have_attribute("data-status", "idle")
