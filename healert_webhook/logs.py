"""Logging setup: one line per record, text or JSON, safe against injected line breaks.

What a line is about (a rule, an actor, an entity, an auditID, a key) goes in the record's
fields (`extra=`), not only in its message: JSON lines carry them as fields of their own,
text lines as `key=value` after the message.

Log messages often carry values an outsider controls (user names, request URIs, header
values, file contents in error messages). In text format the whole rendered line goes
through `text.clean_text`, so a newline or an ANSI escape inside such a value shows up as
`\\n` / `\\x1b` instead of forging a second line. In JSON format the encoder escapes them.
Tracebacks are folded into the same line for the same reason: one record, one line.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
import weakref
from typing import Any, ClassVar, TextIO
from urllib.parse import urlsplit, urlunsplit

import orjson

from healert_webhook.text import clean_text

MAX_LINE = 16_384  # a log line never grows past this, whatever a value holds
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}
QUIET_LIBRARIES = ("httpx", "httpcore")  # kept at WARNING whatever the level
# Attributes every LogRecord has; anything else came from `extra=` and is shown as a field.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime",
                                                              "color_message", "taskName"}


_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#\s]*@")


def shown_url(url: str | None) -> str | None:
    """`url` as it may be shown: a password in it replaced by `***` (`user:***@host`),
    or the whole user info when it has no password. The one form ever logged or printed."""
    if url is None:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_urls(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return url if "@" not in url else redact_urls(url)
    user, colon, _password = userinfo.partition(":")
    shown = f"{user}:***@{host}" if user and colon else f"***@{host}"
    return urlunsplit(parts._replace(netloc=shown))


def redact_urls(text: str) -> str:
    """`text` with the user info of every URL in it masked (an error message, a value that
    failed a check); without a scheme, everything up to an `@` goes."""
    masked = _USERINFO.sub(r"\1***@", text)
    if "@" in masked and "://" not in masked:
        return "***@" + masked.rpartition("@")[2]
    return masked


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


def _text_value(value: Any) -> str:
    """A field's value in a text line: strings as they are, anything else as JSON."""
    if isinstance(value, str):
        return value
    return orjson.dumps(value, default=str).decode("utf-8")


class TextFormatter(logging.Formatter):
    """`<ts> <LEVEL> <logger>: <msg> key=value ...` with control characters escaped."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one record as exactly one printable line."""
        parts = [_timestamp(record.created), record.levelname, f"{record.name}:",
                 _message(record)]
        parts.extend(f"{key}={_text_value(value)}" for key, value in _extra(record).items())
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
    # The HTTP client's own lines name every request's URL, credentials included, once per
    # request: the forwarder logs what matters (one line per delivered event) itself.
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
    # Each of the agent's two servers would say it started; the agent's own line does.
    logging.getLogger("uvicorn.error").addFilter(_not_started_server)


def _not_started_server(record: logging.LogRecord) -> bool:
    """False for uvicorn's "Started server process" line."""
    return not str(record.msg).startswith("Started server process")


class Limiter:
    """At most `per_interval` lines per `interval` seconds for each key; the rest counted.

    Where an outsider or a flood decides how often something happens (handshakes without a
    certificate, a replayed month of detections), every occurrence still counts in a
    metric, but the log gets the first few of each kind per interval and then one summary
    line: "N more <what> (<key>) in the last <interval> s". The summary is written at the
    next occurrence after the interval or by `flush_all()`, which the agent calls once a
    second. Thread-safe.
    """

    _all: ClassVar[weakref.WeakSet[Limiter]] = weakref.WeakSet()

    def __init__(self, logger: logging.Logger, *, per_interval: int, interval: float,
                 what: str) -> None:
        self.logger = logger
        self.per_interval = per_interval
        self.interval = interval
        self.what = what
        self._lock = threading.Lock()
        self._started: dict[str, float] = {}
        self._shown: dict[str, int] = {}
        self._held: dict[str, tuple[int, int]] = {}  # key -> (suppressed, level)
        Limiter._all.add(self)

    def info(self, msg: str, *args: Any, key: str = "",
             extra: dict[str, Any] | None = None) -> None:
        """Log at INFO within the budget of `key`."""
        self.log(logging.INFO, msg, *args, key=key, extra=extra)

    def warning(self, msg: str, *args: Any, key: str = "",
                extra: dict[str, Any] | None = None) -> None:
        """Log at WARNING within the budget of `key`."""
        self.log(logging.WARNING, msg, *args, key=key, extra=extra)

    def error(self, msg: str, *args: Any, key: str = "",
              extra: dict[str, Any] | None = None) -> None:
        """Log at ERROR within the budget of `key`."""
        self.log(logging.ERROR, msg, *args, key=key, extra=extra)

    def log(self, level: int, msg: str, *args: Any, key: str = "",
            extra: dict[str, Any] | None = None) -> None:
        """Log `msg % args` (with the fields of `extra`) if `key` has budget left in this
        interval, else count it."""
        now = time.monotonic()
        with self._lock:
            summary = self._roll(key, now)
            shown = self._shown.get(key, 0)
            if shown < self.per_interval:
                self._shown[key] = shown + 1
                emit = True
            else:
                suppressed, _ = self._held.get(key, (0, level))
                self._held[key] = (suppressed + 1, level)
                emit = False
        if summary is not None:
            self._summarise(key, *summary)
        if emit:
            self.logger.log(level, msg, *args, extra=extra)

    def _roll(self, key: str, now: float) -> tuple[int, int, float] | None:
        """Start a new interval for `key` when the last one is over; its summary, if any."""
        started = self._started.get(key)
        if started is not None and now - started < self.interval:
            return None
        self._started[key] = now
        self._shown[key] = 0
        held = self._held.pop(key, None)
        if held is None or started is None:
            return None
        return held[0], held[1], now - started

    def _summarise(self, key: str, count: int, level: int, seconds: float) -> None:
        label = f" ({key})" if key else ""
        self.logger.log(level, "%d more %s%s in the last %.0f s (log lines limited to %d "
                        "per %.0f s; metrics count every one)", count, self.what, label,
                        seconds, self.per_interval, self.interval)

    def flush(self) -> None:
        """Write the summaries of intervals that are over."""
        now = time.monotonic()
        with self._lock:
            due = [(key, self._roll(key, now)) for key in list(self._held)]
        for key, summary in due:
            if summary is not None:
                self._summarise(key, *summary)

    @classmethod
    def flush_all(cls) -> None:
        """`flush` every limiter of the process."""
        for limiter in list(cls._all):
            limiter.flush()
