"""Take docs/admin.png and docs/admin-login.png: the admin page of a two-node Redis cluster
with some traffic, in headless Chromium.

Usage: .venv/bin/python scripts/admin_screenshots.py [OUTPUT_DIR]
Needs redis-server and Debian's /usr/bin/chromium (scripts/setup.sh --test installs both).
"""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness import Client, RedisProcess, ServerProcess
from tests.integration.test_browser import CHROMIUM, CHROMIUM_ARGS

ROOT = Path(__file__).resolve().parent.parent
KEY = "screenshot-key"


async def traffic(nodes: list[ServerProcess], stop: threading.Event) -> None:
    """A few members on both nodes chatting at a steady rate until `stop`."""
    rooms = {"lobby": ["alice", "bob", "carol", "dave"], "support": ["erin", "frank"]}
    clients: list[tuple[str, Client]] = []
    for room, names in rooms.items():
        for index, name in enumerate(names):
            client = await Client.connect(nodes[index % 2].ws_url, name, room)
            await client.join()
            clients.append((room, client))
    lines = ["morning!", "deploy at 14:00", "dashboards look fine", "thanks", "on it"]
    tick = 0
    while not stop.is_set():
        room, client = clients[tick % len(clients)]
        text = lines[tick % len(lines)]
        await client.send({"topic": "chat", "payload": {"text": text}})
        tick += 1
        await asyncio.sleep(0.05 if room == "lobby" else 0.2)
    for _, client in clients:
        await client.close()


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs"
    redis = RedisProcess().start()
    flags = ["--broker", redis.url, "--api-key", KEY]
    nodes = [
        ServerProcess(["--port", "0", "--node-id", name, *flags]).start()
        for name in ("node-a", "node-b")
    ]
    stop = threading.Event()
    chatter = threading.Thread(target=lambda: asyncio.run(traffic(nodes, stop)))
    chatter.start()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1200, "height": 1180})
            page.goto(nodes[0].url + "/admin")
            expect(page.locator("#login-view")).to_be_visible()
            page.screenshot(path=str(out / "admin-login.png"), clip=_top(1200, 420))
            page.fill("#key", KEY)
            page.press("#key", "Enter")
            expect(page.locator("#nodes tbody tr")).to_have_count(2)
            page.locator('#rooms tr[data-room="lobby"] button').click()
            expect(page.locator("#members li")).to_have_count(4)
            page.wait_for_timeout(20_000)  # let the chart fill for a while
            page.screenshot(path=str(out / "admin.png"), full_page=True)
            browser.close()
    finally:
        stop.set()
        chatter.join(10)
        for node in nodes:
            node.stop()
        redis.stop()
    print(f"wrote {out / 'admin.png'} and {out / 'admin-login.png'}")


def _top(width: int, height: int) -> dict[str, float]:
    return {"x": 0, "y": 0, "width": width, "height": height}


if __name__ == "__main__":
    main()
