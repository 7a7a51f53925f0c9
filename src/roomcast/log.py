"""Structured log lines: one event name and key=value fields (or JSON), never payloads or tokens."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

__all__ = ["FOREIGN_LOGGERS", "configure_logging", "log_event", "logger", "redact_url"]

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


def _escaped(text: str) -> str:
    """`text` with non-printable characters (terminal escapes, NUL, BEL) escaped."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _printable(value: Any) -> Any:
    return _escaped(value) if isinstance(value, str) else value


def _quote(value: Any) -> str:
    text = _escaped(str(value))
    if not text or any(c.isspace() or c in '"=' for c in text):
        return orjson.dumps(text).decode()
    return text


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """A record's structured fields; a record of another library's logger (uvicorn,
    websockets) becomes the event `<logger>.log` with its message as a field."""
    fields: dict[str, Any] | None = getattr(record, "fields", None)
    if fields is not None:
        return fields
    return {"message": record.getMessage()}


def _event(record: logging.LogRecord) -> str:
    if hasattr(record, "fields"):
        return _escaped(record.getMessage())
    return f"{record.name}.log"


class TextFormatter(logging.Formatter):
    """`2026-01-01T00:00:00Z info event key=value ...`."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields = _fields(record)
        parts = [f"{stamp}Z", record.levelname.lower(), _event(record)]
        parts.extend(f"{k}={_quote(v)}" for k, v in fields.items() if v is not None)
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: `{"ts", "level", "event", ...fields}`."""

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        out: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "event": _event(record),
            **{k: _printable(v) for k, v in fields.items() if v is not None},
        }
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


FOREIGN_LOGGERS = ("uvicorn", "websockets")
"""Loggers of the libraries under roomcast's server whose lines take roomcast's format."""


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    """Send roomcast's log lines, and those of the WebSocket and HTTP layers (uvicorn,
    websockets, at warning and above), to stderr in `fmt` ("text" or "json") at `level`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False
    for name in FOREIGN_LOGGERS:
        foreign = logging.getLogger(name)
        foreign.handlers[:] = [handler]
        foreign.setLevel(max(logging.WARNING, logger.level))
        foreign.propagate = False
