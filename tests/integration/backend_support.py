"""The scriptable backend (backend.py) as a process, and waits on what it received."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson

from tests.harness import ROOT, START_TIMEOUT, LogReader

_LISTENING = re.compile(r"backend listening url=(http://\S+)")
_DELIVERED = re.compile(r"backend answered .* delivered=(\d+)")


class Backend:
    """A running backend: its URL, its rules and what it received."""

    def __init__(self, proc: subprocess.Popen[bytes], log: LogReader, url: str) -> None:
        self.proc = proc
        self.log = log
        self.url = url

    def rules(self, *rules: dict[str, Any]) -> None:
        """Answer requests by these rules from now on (see backend.py)."""
        httpx.post(
            f"{self.url}/_control", json={"rules": list(rules)}, timeout=5
        ).raise_for_status()

    def requests(self, path: str | None = None) -> list[dict[str, Any]]:
        """Every request received so far (of `path`), in arrival order."""
        answer = httpx.get(f"{self.url}/_requests", timeout=5)
        return [r for r in answer.json() if path is None or r["path"] == path]

    def delivered(self, path: str = "/hook") -> list[dict[str, Any]]:
        """The webhook events answered with a 2xx, in order (duplicates kept)."""
        events: list[dict[str, Any]] = []
        for request in self.requests(path):
            if 200 <= request["status"] < 300:
                events += orjson.loads(request["body"])["events"]
        return events

    def wait_delivered(self, count: int, timeout: float = 20.0) -> None:
        """Wait until at least `count` webhook events were answered with a 2xx."""
        deadline = time.monotonic() + timeout
        log = self.log
        with log._cond:
            while True:
                seen = [int(m.group(1)) for line in log.lines if (m := _DELIVERED.search(line))]
                if seen and seen[-1] >= count:
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out waiting for {count} webhook events:\n{log.text()}"
                    )
                log._cond.wait(left)

    def wait_events(
        self, done: Callable[[list[dict[str, Any]]], bool], timeout: float = 20.0
    ) -> list[dict[str, Any]]:
        """Wait until the delivered events satisfy `done` (checked at each answer)."""
        deadline = time.monotonic() + timeout
        log = self.log
        while True:
            with log._cond:
                lines = len(log.lines)
            events = self.delivered()
            if done(events):
                return events
            with log._cond:
                while len(log.lines) == lines:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise AssertionError(f"timed out; delivered so far: {events}")
                    log._cond.wait(left)

    def wait_held(self, count: int, timeout: float = 20.0) -> None:
        """Wait until `count` requests are held by a `hold` rule."""
        self.log.wait_for(rf"backend holding held={count}\b", timeout)

    def held(self) -> int:
        """How many requests a `hold` rule holds now."""
        return int(httpx.get(f"{self.url}/_held", timeout=5).json()["held"])

    def release(self) -> None:
        """Let every held request (and every later one) through."""
        httpx.post(f"{self.url}/_release", timeout=5).raise_for_status()

    def wait_answered(self, pattern: str, timeout: float = 20.0) -> None:
        """Wait for an answer line matching `pattern` (`path=/hook status=500`)."""
        self.log.wait_for(pattern, timeout)


@contextlib.contextmanager
def running_backend(port: int = 0) -> Iterator[Backend]:
    """The backend process on `port` (0: a free one), stopped on exit."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.backend", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    log = LogReader(proc.stderr)
    try:
        url = log.wait_for(_LISTENING, START_TIMEOUT).group(1)
        yield Backend(proc, log, url)
    finally:
        proc.kill()
        proc.wait(10)
        log.join(5)
        if proc.stderr is not None:
            proc.stderr.close()


def verify(secret: str, request: dict[str, Any]) -> bool:
    """Whether a received webhook request carries a valid signature."""
    timestamp = request["headers"]["x-roomcast-timestamp"]
    expected = hmac.new(
        secret.encode(), f"{timestamp}.{request['body']}".encode(), hashlib.sha256
    ).hexdigest()
    return hmac.compare_digest(
        request["headers"].get("x-roomcast-signature", ""), f"sha256={expected}"
    )


def unique(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`events` without repeated ids, first occurrence kept (what a receiver does)."""
    seen: set[str] = set()
    out = []
    for event in events:
        if event["id"] not in seen:
            seen.add(event["id"])
            out.append(event)
    return out
