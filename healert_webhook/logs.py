"""Logging setup: one line per record, text or JSON, safe against injected line breaks.

Log messages often carry values an outsider controls (user names, request URIs, header
values, file contents in error messages). In text format the whole rendered line goes
through `audit.clean_text`, so a newline or an ANSI escape inside such a value shows up as
`\\n` / `\\x1b` instead of forging a second line. In JSON format the encoder escapes them.
Tracebacks are folded into the same line for the same reason: one record, one line.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

import orjson

from healert_webhook.audit import clean_text

MAX_LINE = 16_384  # a log line never grows past this, whatever a value holds
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}
# Attributes every LogRecord has; anything else came from `extra=` and is shown as a field.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime",
                                                              "color_message", "taskName"}


def _timestamp(created: float) -> str:
    """ISO 8601 UTC with milliseconds, e.g. 2026-11-26T10:00:00.123Z."""
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{whole}.{int(created % 1 * 1000):03d}Z"


def _extra(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except (TypeError, ValueError):  # a bad format string must not lose the record
        return f"{record.msg!r} {record.args!r}"


class TextFormatter(logging.Formatter):
    """`<ts> <LEVEL> <logger>: <msg> key=value ...` with control characters escaped."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one record as exactly one printable line."""
        parts = [_timestamp(record.created), record.levelname, f"{record.name}:",
                 _message(record)]
        parts.extend(f"{key}={value}" for key, value in _extra(record).items())
        if record.exc_info:
            parts.append("| " + self.formatException(record.exc_info))
        return clean_text(" ".join(parts), MAX_LINE)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, plus the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one record as one JSON object (the encoder escapes control characters)."""
        doc: dict[str, Any] = {"ts": _timestamp(record.created), "level": record.levelname,
                               "logger": record.name, "msg": _message(record)[:MAX_LINE]}
        for key, value in _extra(record).items():
            doc.setdefault(key, value)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)[:MAX_LINE]
        return orjson.dumps(doc, default=str).decode("utf-8")


def setup(fmt: str = "text", level: str = "info", stream: TextIO | None = None) -> None:
    """Route every logger (ours and uvicorn's) to one handler on stderr in `fmt`."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS.get(level, logging.INFO))
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        # uvicorn's own handlers would print a second, unescaped copy; ours are enough.
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # One line per request would cost more than the request; the metrics count them.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
