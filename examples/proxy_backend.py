"""An example backend for roomcast's proxy and webhooks, with the standard library only.

It decides who gets in (connect), which rooms they may join (join) and what they may publish
(publish), and it receives webhooks, checking their signature. Run it, then roomcast:

    python examples/proxy_backend.py --port 9000 --webhook-secret s3cret
    roomcast serve --proxy-connect-url http://127.0.0.1:9000/connect \\
                   --proxy-join-url http://127.0.0.1:9000/join \\
                   --proxy-publish-url http://127.0.0.1:9000/publish \\
                   --webhook-url http://127.0.0.1:9000/webhook --webhook-secret s3cret

and connect with `ws://127.0.0.1:8000/api/v1/ws?token=alice-token&roomID=lobby`.
See docs/webhooks.md for the requests and the answers.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import re
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# Who a token is, and what it grants: what a real backend reads from its session store.
USERS: dict[str, dict[str, Any]] = {
    "alice-token": {"username": "alice", "rooms": ["*"], "publish": ["chat", "typing"]},
    "bob-token": {"username": "bob", "rooms": ["lobby", "locked-*"], "publish": ["chat"]},
}
BLOCKED = re.compile(r"\b(darn|heck)\b", re.IGNORECASE)
MAX_TEXT = 500


def connect(request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Admit a known token as its user with its grants; 401 without a token, 403 otherwise."""
    token = request.get("token")
    if not token:
        return 401, {}
    user = USERS.get(token)
    return (200, user) if user is not None else (403, {})


def join(request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Rooms `locked-...` are closed to everyone, whatever the grants say."""
    return (403, {}) if request["roomID"].startswith("locked-") else (200, {})


def publish(request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Chat messages: too long is refused, blocked words are masked (a rewrite)."""
    payload = request["payload"]
    if request["topic"] != "chat" or not isinstance(payload, dict):
        return 200, {}
    text = str(payload.get("text", ""))
    if len(text) > MAX_TEXT:
        return 403, {}
    masked = BLOCKED.sub(lambda m: "*" * len(m.group()), text)
    return (200, {"payload": {**payload, "text": masked}}) if masked != text else (200, {})


ROUTES = {"/connect": connect, "/join": join, "/publish": publish}


def signed(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """Whether a webhook request is signed with `secret` and fresh (five minutes)."""
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    fresh = timestamp.isdigit() and abs(time.time() - int(timestamp)) < 300
    return fresh and hmac.compare_digest(signature, "sha256=" + expected.hexdigest())


class Backend(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: roomcast reuses its connections
    webhook_secret: str | None = None

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        if self.path == "/webhook":
            secret = self.webhook_secret
            if secret is not None and not signed(
                secret,
                self.headers.get("x-roomcast-timestamp", ""),
                raw,
                self.headers.get("x-roomcast-signature", ""),
            ):
                self._answer(401, {})
                return
            for event in json.loads(raw)["events"]:
                # A real backend stores them, deduplicating by id.
                print(f"event {json.dumps(event, sort_keys=True)}", flush=True)
            self._answer(200, {})
            return
        route = ROUTES.get(self.path)
        if route is None:
            self._answer(404, {})
            return
        status, body = route(json.loads(raw))
        self._answer(status, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--webhook-secret")
    args = parser.parse_args()
    Backend.webhook_secret = args.webhook_secret
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Backend)
    server.daemon_threads = True
    print(f"backend listening on http://127.0.0.1:{server.server_port}", file=sys.stderr)
    sys.stderr.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
