"""A scriptable HTTP backend for the tests: a webhook receiver and a proxy backend in one.

Run as `python -m tests.integration.backend [PORT]`; it logs `backend listening url=...` when
ready. Every request to another path than `/_control` and `/_requests` is recorded and
answered by the first rule that matches it (default: 200 `{}`):

- `POST /_control` with `{"rules": [{"path": "/hook", "contains": "bob", "status": 500,
  "body": "...", "delay": 2.0}, ...]}` replaces the rules (`contains` matches the body; a
  rule with `"trickle": SECONDS` sends its head at once, then its body a byte at a time);
- `GET /_requests` answers every recorded request: `{"path", "headers", "body", "status"}`,
  with the status it was answered with;
- a rule with `"hold": true` keeps its requests waiting (logged `backend holding held=N`)
  until `POST /_release`.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_lock = threading.Lock()
_rules: list[dict[str, Any]] = []
_requests: list[dict[str, Any]] = []
_released = threading.Event()
_held = 0
_delivered = 0
"""Webhook events answered with a 2xx so far (logged, so tests wait on the log)."""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/_requests":
            with _lock:
                body = json.dumps(_requests).encode()
            self._answer(200, body)
        elif self.path == "/_held":
            with _lock:
                body = json.dumps({"held": _held}).encode()
            self._answer(200, body)
        else:
            self._answer(404, b"{}")

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length)
        if self.path == "/_release":
            _released.set()
            self._answer(200, b"{}")
            return
        if self.path == "/_control":
            global _rules
            with _lock:
                _rules = json.loads(raw)["rules"]
            self._answer(200, b"{}")
            return
        text = raw.decode(errors="replace")
        with _lock:
            rule = next(
                (
                    r
                    for r in _rules
                    if r.get("path", self.path) == self.path and r.get("contains", "") in text
                ),
                {},
            )
        if rule.get("hold"):
            global _held
            with _lock:
                _held += 1
                line = f"backend holding held={_held}"
            print(line, file=sys.stderr, flush=True)
            _released.wait(60)
            with _lock:
                _held -= 1
        delay = float(rule.get("delay", 0))
        if delay:
            time.sleep(delay)  # a slow backend, as the test asked for
        status = int(rule.get("status", 200))
        with _lock:
            _requests.append(
                {
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": text,
                    "status": status,
                }
            )
        try:
            body = str(rule.get("body", "{}")).encode()
            trickle = float(rule.get("trickle", 0))
            if trickle:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.flush()
                for i in range(len(body)):
                    time.sleep(trickle)  # a backend that answers a byte at a time
                    self.wfile.write(body[i : i + 1])
                    self.wfile.flush()
            else:
                self._answer(status, body)
        except OSError:
            return  # the client gave up waiting (a timeout test)
        global _delivered
        with _lock:
            events = _events(text) if 200 <= status < 300 else 0
            _delivered += events
            line = f"backend answered path={self.path} status={status} delivered={_delivered}"
        print(line, file=sys.stderr, flush=True)


def _events(text: str) -> int:
    try:
        body = json.loads(text)
    except ValueError:
        return 0
    events = body.get("events") if isinstance(body, dict) else None
    return len(events) if isinstance(events, list) else 0


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print(f"backend listening url=http://127.0.0.1:{server.server_port}", file=sys.stderr)
    sys.stderr.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
