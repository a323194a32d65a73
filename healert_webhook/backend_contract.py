"""What the Healert backend accepts on `POST /events`, as pure functions.

The backend is a FastAPI app: an event outside these rules gets a 422 and is lost unless
it is made valid first. The forwarder calls `prepare` before every request, so an event the
backend would refuse is either fixed losslessly or dead-lettered with the reason, without
spending a request (and a slot of the backend's 60/min rate limit) on it. The test backend
(`tests/support/backend.py`) calls `validate` to answer exactly as the real one would.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any


def _backend_pattern(stated: str) -> re.Pattern[str]:
    """The backend's pattern as its regex engine reads it: there `$` ends the string,
    whereas Python's `$` also matches before a final newline."""
    return re.compile(stated.removesuffix("$") + r"\Z")


def _stated(pattern: re.Pattern[str]) -> str:
    """The pattern as the backend states it in a 422."""
    return pattern.pattern.removesuffix(r"\Z") + "$"


ENTITY_REF = _backend_pattern(r"^[a-zA-Z0-9_-]+:[a-zA-Z0-9_-]+/[a-zA-Z0-9_.-]+$")
TYPE = _backend_pattern(r"^[a-z0-9][a-z0-9-]*[a-z0-9]$")
TYPE_LENGTH = (3, 50)
SEVERITIES = ("high", "medium", "low")
REQUIRED = ("entity_ref", "type", "severity")
# optional text fields and their longest length
OPTIONAL_TEXT = {"actor": 200, "service": 200, "namespace": 200, "workflow": 200,
                 "description": 500}
FIELDS = frozenset((*REQUIRED, *OPTIONAL_TEXT, "points", "timestamp"))
POINTS_MIN, POINTS_MAX = 1, 100
ANSWER_MAX = 1000  # characters of a backend answer the agent keeps (dead letters, logs)
TIMESTAMP_MAX = 40


@dataclass(frozen=True)
class Problem:
    """One field the backend would refuse, shaped like one FastAPI validation error."""

    field: str
    msg: str
    type: str

    def as_fastapi(self) -> dict[str, Any]:
        """The `{"loc": [...], "msg": ..., "type": ...}` item of a 422 `detail` list."""
        return {"loc": ["body", self.field], "msg": self.msg, "type": self.type}

    def __str__(self) -> str:
        return f"{self.field}: {self.msg}"


def _check_text(name: str, value: Any, low: int, high: int) -> Problem | None:
    if not isinstance(value, str):
        return Problem(name, "Input should be a valid string", "string_type")
    if len(value) < low:
        return Problem(name, f"String should have at least {low} characters", "string_too_short")
    if len(value) > high:
        return Problem(name, f"String should have at most {high} characters", "string_too_long")
    return None


def _check_pattern(name: str, value: Any, low: int, high: int,
                   pattern: re.Pattern[str]) -> Problem | None:
    problem = _check_text(name, value, low, high)
    if problem is None and not pattern.match(value):
        return Problem(name, f"String should match pattern '{_stated(pattern)}'",
                       "string_pattern_mismatch")
    return problem


def _check_points(value: Any) -> Problem | None:
    # bool is an int in Python but not a point count; pydantic's strict int would refuse it
    if isinstance(value, bool) or not isinstance(value, int):
        return Problem("points", "Input should be a valid integer", "int_type")
    if value < POINTS_MIN:
        return Problem("points", f"Input should be greater than or equal to {POINTS_MIN}",
                       "greater_than_equal")
    if value > POINTS_MAX:
        return Problem("points", f"Input should be less than or equal to {POINTS_MAX}",
                       "less_than_equal")
    return None


def _check_timestamp(value: Any) -> Problem | None:
    problem = _check_text("timestamp", value, 1, TIMESTAMP_MAX)
    if problem is not None:
        return problem
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return Problem("timestamp", "Input should be an ISO 8601 date and time",
                       "datetime_from_date_parsing")
    return None


def window_start(days: float, now: datetime | None = None) -> str:
    """The oldest timestamp inside a backend window of `days`, as the backend compares it.

    The backend keeps and shows events whose `timestamp`, compared as a string, is at or
    after this one; ISO 8601 times of the same zone order like their strings.
    """
    moment = (now or datetime.now(UTC)) - timedelta(days=days)
    return moment.isoformat()


def older_than(event: dict[str, Any], days: float, now: datetime | None = None) -> bool:
    """True when the event's timestamp falls before a window of `days` ending now.

    An event without a timestamp is stamped by the backend when it arrives: never old.
    """
    stamp = event.get("timestamp")
    return isinstance(stamp, str) and bool(stamp) and stamp < window_start(days, now)


def validate(event: Any) -> list[Problem]:
    """Every reason the backend would answer 422 to `event`; empty when it would accept it.

    Unknown fields are not problems (FastAPI ignores them), but `prepare` never sends any.
    """
    if not isinstance(event, dict):
        return [Problem("body", "Input should be a valid dictionary", "model_type")]
    problems: list[Problem] = []
    for name in REQUIRED:
        if name not in event:
            problems.append(Problem(name, "Field required", "missing"))
    checks: list[Problem | None] = []
    if "entity_ref" in event:
        checks.append(_check_pattern("entity_ref", event["entity_ref"], 3, 200, ENTITY_REF))
    if "type" in event:
        checks.append(_check_pattern("type", event["type"], *TYPE_LENGTH, TYPE))
    if "severity" in event and event["severity"] not in SEVERITIES:
        checks.append(Problem("severity", "Input should be 'high', 'medium' or 'low'", "enum"))
    for name, limit in OPTIONAL_TEXT.items():
        if event.get(name) is not None:
            checks.append(_check_text(name, event[name], 0, limit))
    if event.get("points") is not None:
        checks.append(_check_points(event["points"]))
    if event.get("timestamp") is not None:
        checks.append(_check_timestamp(event["timestamp"]))
    problems.extend(p for p in checks if p is not None)
    return problems


def _normalise(event: dict[str, Any]) -> dict[str, Any]:
    """Lossless fixes: drop unknown and null fields, trim whitespace, lower-case severity,
    and turn a whole float point count (5.0) into an int."""
    fixed: dict[str, Any] = {}
    for name, value in event.items():
        if name in FIELDS and value is not None:
            fixed[name] = _fix_value(name, value)
    return fixed


def _fix_value(name: str, value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        return text.lower() if name == "severity" else text
    if name == "points" and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def prepare(event: Any) -> tuple[dict[str, Any] | None, str | None]:
    """The body to POST for `event`, or None and the reason the backend would refuse it."""
    if not isinstance(event, dict):
        return None, "body: not a JSON object"
    fixed = _normalise(event)
    problems = validate(fixed)
    if problems:
        return None, "; ".join(str(p) for p in problems)
    return fixed, None
