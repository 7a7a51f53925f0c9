"""Take docs/demo.png: the demo chat page in headless Chromium, three people in one room.

Usage: .venv/bin/python scripts/demo_screenshot.py [OUTPUT]
Needs Debian's /usr/bin/chromium (scripts/setup.sh --test installs it) and the dev extra.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "demo.png"
    server = subprocess.Popen(
        [sys.executable, "-m", "roomcast", "serve", "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert server.stderr is not None
        for line in server.stderr:
            match = re.search(r"roomcast\.ready url=(\S+)", line)
            if match:
                url = match.group(1) + "/"
                break
        else:
            raise SystemExit("the server did not start")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            pages = {}
            for name in ("alice", "bob", "carol"):
                page = browser.new_page(viewport={"width": 1000, "height": 560})
                page.goto(url)
                page.fill("#username", name)
                page.fill("#room", "lobby")
                page.press("#room", "Enter")
                expect(page.locator("#status")).to_have_attribute("data-status", "connected")
                pages[name] = page
            script = [
                ("bob", "Morning! Is the deploy still on for today?"),
                ("alice", "Yes, at 14:00. I'll post the checklist here."),
                ("carol", "I can watch the dashboards while it rolls out."),
                ("alice", "Perfect, thanks both!"),
            ]
            for n, (name, text) in enumerate(script, 1):
                pages[name].fill("#text", text)
                pages[name].press("#text", "Enter")
                expect(pages["alice"].locator(".msg")).to_have_count(n)
            pages["alice"].screenshot(path=str(out))
            browser.close()
    finally:
        server.terminate()
        server.wait(10)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
