"""Structured log lines: one event name and key=value fields (or JSON), never payloads or tokens."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

__all__ = ["configure_logging", "log_event", "logger", "redact_url"]

logger = logging.getLogger("roomcast")


def log_event(event: str, /, level: int = logging.INFO, **fields: Any) -> None:
    """Log `event` with structured `fields` (room, username, connection_id, ...).

    Callers never pass payloads or tokens: a log line names who and what, not the content.
    """
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"fields": fields}, exc_info=fields.pop("exc_info", None))


def redact_url(url: str) -> str:
    """`url` fit for a log line: the user and password of each comma-separated URL replaced
    by `***` (`redis://:secret@host:6379/0` -> `redis://***@host:6379/0`)."""
    parts = []
    for part in url.split(","):
        scheme, sep, rest = part.partition("://")
        authority, slash, path = rest.partition("/")
        if sep and "@" in authority:
            part = f"{scheme}://***@{authority.rpartition('@')[2]}{slash}{path}"
        parts.append(part)
    return ",".join(parts)


def _quote(value: Any) -> str:
    text = str(value)
    if not text or any(c.isspace() or c in '"=' for c in text):
        return orjson.dumps(text).decode()
    return text


class TextFormatter(logging.Formatter):
    """`2026-01-01T00:00:00Z info event key=value ...`."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields: dict[str, Any] = getattr(record, "fields", {})
        parts = [f"{stamp}Z", record.levelname.lower(), record.getMessage()]
        parts.extend(f"{k}={_quote(v)}" for k, v in fields.items() if v is not None)
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: `{"ts", "level", "event", ...fields}`."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, "fields", {})
        out: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "event": record.getMessage(),
            **{k: v for k, v in fields.items() if v is not None},
        }
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    """Send roomcast's log lines to stderr in `fmt` ("text" or "json") at `level`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False
