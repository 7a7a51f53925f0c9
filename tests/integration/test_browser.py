"""The demo chat page in headless Chromium (Debian's /usr/bin/chromium) against real servers:
chatting, room isolation, a phone-sized window, and reconnecting across a server restart."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, ViewportSize, expect, sync_playwright

from tests.harness import RECV_TIMEOUT, RedisProcess, ServerProcess

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


def publish(server: ServerProcess, room: str, text: str) -> int:
    """Publish a chat message through the HTTP API."""
    response = httpx.post(
        f"{server.url}/api/v1/rooms/{room}/messages",
        json={"topic": "chat", "payload": {"text": text}},
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
    expect(page.locator(".notice.reset")).to_have_count(1)
    publish(second, "r1", "after")
    expect(page.locator(".msg .text")).to_have_text(["before", "after"])
