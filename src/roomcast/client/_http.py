"""A small client of the HTTP API, on the standard library only (blocking calls)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from ._errors import ApiError

__all__ = ["HttpApi"]


class HttpApi:
    """Blocking calls to a roomcast server's HTTP API (section 4 of the protocol).

    Args:
        url: the server's base URL, `http://HOST:PORT`.
        api_key: sent as `Authorization: Bearer <key>` when set.
        timeout: seconds allowed per call.

    Every method raises :class:`~roomcast.client.ApiError` when the server answers with an
    error (its HTTP status and the `code` of the JSON error body) or cannot be reached.
    """

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"not an HTTP URL: {url!r} (expected http://HOST:PORT)")
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout

    def publish(
        self, room: str, topic: str, payload: Any, to: str | None = None, *, key: str | None = None
    ) -> int:
        """Publish to `room` (or to its member `to`); returns the message's offset.

        With `key` (sent as `Idempotency-Key`), retrying the call after an error or a
        timeout publishes the message at most once: a repeat within 300 seconds returns the
        first one's offset.
        """
        body: dict[str, Any] = {"topic": topic, "payload": payload}
        if to is not None:
            body["to"] = to
        headers = None if key is None else {"Idempotency-Key": key}
        answer = self._call("POST", f"/api/v1/rooms/{_seg(room)}/messages", body, headers)
        return int(answer["offset"])

    def rooms(self) -> list[dict[str, Any]]:
        """Every room with members, cluster-wide: `[{"roomID": ..., "members": [...]}]`."""
        return list(self._call("GET", "/api/v1/rooms")["rooms"])

    def members(self, room: str) -> list[str]:
        """The members of `room`, cluster-wide."""
        return list(self._call("GET", f"/api/v1/rooms/{_seg(room)}/members")["members"])

    def history(
        self, room: str, since: int | None = None, limit: int | None = None
    ) -> dict[str, Any]:
        """Retained messages of `room` after `since`: `{"epoch": ..., "messages": [...]}`."""
        query = {k: v for k, v in (("since", since), ("limit", limit)) if v is not None}
        suffix = f"?{urlencode(query)}" if query else ""
        return dict(self._call("GET", f"/api/v1/rooms/{_seg(room)}/history{suffix}"))

    def kick(self, room: str, username: str) -> None:
        """Disconnect member `username` of `room` wherever it is connected (4499)."""
        self._call("DELETE", f"/api/v1/rooms/{_seg(room)}/members/{_seg(username)}")

    def cluster_stats(self) -> dict[str, Any]:
        """The cluster view of the admin page: nodes, totals, busiest rooms, closes by code
        (`GET /api/v1/admin/stats`, served when the server's admin is on; docs/admin.md)."""
        return dict(self._call("GET", "/api/v1/admin/stats"))

    def _call(
        self, method: str, path: str, body: Any = None, extra: dict[str, str] | None = None
    ) -> Any:
        headers = {"Accept": "application/json", **(extra or {})}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url + path, data, headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise _api_error(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiError(f"cannot reach {self.url}: {reason}") from None
        return json.loads(raw) if raw else None


def _seg(value: str) -> str:
    return quote(value, safe="")


def _api_error(exc: urllib.error.HTTPError) -> ApiError:
    with exc:
        raw = exc.read()
    code = message = None
    try:
        error = json.loads(raw)["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        pass
    text = f"{code}: {message}" if code else raw.decode(errors="replace")[:200] or exc.reason
    return ApiError(f"HTTP {exc.code}: {text}", status=exc.code, wire_code=code)
