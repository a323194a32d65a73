"""The `check-backend` and `outbox` commands: what an operator runs when delivery is stuck.

Both print plain text (or one JSON object with `--json`) and return the exit code.
cli.py owns argparse and calls these two functions.

Exit codes come from exits.py: check-backend answers OK, CONFIG (no backend URL, key
file unreadable), UNREACHABLE, KEY_REFUSED or EVENT_REFUSED; outbox answers OK, or FAILED
when it refused (purge without --yes) or failed (the message is on stderr).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx

from healert_webhook import __version__, backend, exits
from healert_webhook.backend import Answer, HealthReport, describe_error
from healert_webhook.config import ConfigError, Settings
from healert_webhook.outbox import Outbox, exclusive, move_aside, quick_check
from healert_webhook.records import OutboxError

EXIT_OK, EXIT_CONFIG = exits.OK, exits.CONFIG
EXIT_UNREACHABLE, EXIT_AUTH, EXIT_REJECTED = (exits.UNREACHABLE, exits.KEY_REFUSED,
                                              exits.EVENT_REFUSED)
TEST_EVENT: dict[str, Any] = {
    "entity_ref": "component:default/healert-webhook",
    "type": "healert-webhook-test",
    "severity": "low",
    "points": 1,
    "description": "connectivity test sent by `healert-webhook check-backend --send-test`",
    "workflow": "check-backend",
}


# -- check-backend ------------------------------------------------------------------------

class _Report:
    """Collects the steps of a check for text or JSON output."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.steps: list[dict[str, Any]] = []

    def step(self, name: str, ok: bool | None, message: str) -> None:
        self.steps.append({"step": name, "ok": ok, "message": message})
        if not self.as_json:
            mark = {True: "ok  ", False: "FAIL", None: "warn"}[ok]
            print(f"{mark} {name:<8} {message}")

    def finish(self, code: int) -> int:
        if self.as_json:
            print(json.dumps({"exit_code": code, "steps": self.steps}))
        return code


def check_backend(settings: Settings, send_test: bool, *, as_json: bool = False) -> int:
    """Check health, the key and optionally a real test event; see the module docstring."""
    return asyncio.run(_check_backend(settings, send_test, _Report(as_json)))


async def _check_backend(settings: Settings, send_test: bool, report: _Report) -> int:
    if settings.backend_url is None:
        report.step("config", False, "no backend URL: set HEALERT_BACKEND_URL or --backend-url")
        return report.finish(EXIT_CONFIG)
    try:
        key = await asyncio.to_thread(settings.read_api_key)
    except ConfigError as exc:
        report.step("key", False, str(exc))
        return report.finish(EXIT_CONFIG)
    async with backend.make_client(settings.forward_timeout) as client:
        health = await backend.check_health(settings, client)
        code = _report_health(health, report)
        if code != EXIT_OK:
            return report.finish(code)
        _report_key(settings, key, health, report)
        if health.auth_enabled:
            code = await _check_auth(client, settings, key, report)
            if code != EXIT_OK:
                return report.finish(code)
        if send_test:
            code = await _send_test(client, settings, key, report)
    return report.finish(code)


def _report_health(health: HealthReport, report: _Report) -> int:
    """One step: the backend is healthy, or what it answered instead and what that means."""
    if health.http_status is None:
        report.step("health", False, f"{health.url} unreachable: {health.error}; friction "
                    "events stay queued in the outbox until it can be reached")
        return EXIT_UNREACHABLE
    problem = health.problem()
    if problem is not None:
        report.step("health", False, problem)
        return EXIT_UNREACHABLE
    report.step("health", True, f"{health.url}: status ok, version {health.version}, "
                f"auth {health.auth}")
    return EXIT_OK


def _report_key(settings: Settings, key: str | None, health: HealthReport,
                report: _Report) -> None:
    source = (f"from HEALERT_API_KEY_FILE {settings.api_key_file}"
              if settings.api_key_file else "from HEALERT_API_KEY")
    if key:
        report.step("key", True, f"set ({len(key)} characters, {source})")
    elif health.auth_enabled:
        report.step("key", False, "the backend requires a key and none is set: set "
                    "HEALERT_API_KEY or HEALERT_API_KEY_FILE")
    else:
        report.step("key", True, "none set; the backend does not require one")


async def _post(client: httpx.AsyncClient, settings: Settings, key: str | None,
                body: dict[str, Any]) -> Answer:
    return await backend.post_event(client, settings.backend_url or "", key, body,
                                    settings.forward_timeout)


async def _check_auth(client: httpx.AsyncClient, settings: Settings, key: str | None,
                      report: _Report) -> int:
    """POST an empty object: the key is checked before the body (as a FastAPI dependency
    is), so 401/403 means a refused key and 422 an accepted one; nothing is recorded."""
    try:
        response = await _post(client, settings, key, {})
    except (httpx.HTTPError, TimeoutError, OSError) as exc:
        report.step("auth", False, f"POST /events failed: {describe_error(exc)}")
        return EXIT_UNREACHABLE
    code = response.status
    if code in (401, 403):
        report.step("auth", False, f"the backend refused the key (HTTP {code}): check "
                    "HEALERT_API_KEY / HEALERT_API_KEY_FILE")
        return EXIT_AUTH
    if code == 429:
        report.step("auth", None, "rate-limited (HTTP 429): the key could not be checked; "
                    "try again in a minute")
    else:
        report.step("auth", True, f"key accepted (an empty event was answered HTTP {code})")
    return EXIT_OK


async def _send_test(client: httpx.AsyncClient, settings: Settings, key: str | None,
                     report: _Report) -> int:
    event = {**TEST_EVENT, "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
             "actor": f"healert-webhook/{__version__}"}
    try:
        response = await _post(client, settings, key, event)
    except (httpx.HTTPError, TimeoutError, OSError) as exc:
        report.step("test", False, f"POST /events failed: {describe_error(exc)}")
        return EXIT_UNREACHABLE
    code = response.status
    if 200 <= code < 300:
        report.step("test", True, f"test event delivered to {event['entity_ref']} "
                    f"(HTTP {code}; it adds {event['points']} point to that entity)")
        return EXIT_OK
    if code in (401, 403):
        report.step("test", False, f"the backend refused the key (HTTP {code})")
        return EXIT_AUTH
    report.step("test", False, f"test event refused (HTTP {code}): "
                f"{backend.excerpt(response.body, key, 500)}")
    return EXIT_REJECTED


# -- outbox ----------------------------------------------------------------------------------

def _age(created: float | None) -> str:
    if created is None:
        return "-"
    seconds = max(0.0, time.time() - created)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _emit(as_json: bool, data: Any, lines: list[str]) -> None:
    if as_json:
        print(json.dumps(data, default=str))
    else:
        for line in lines:
            print(line)


def outbox_command(settings: Settings, action: str, args: Any) -> int:
    """`outbox status|list|dead|retry-dead|purge`; `args` may carry `json`, `limit`,
    `keys`, `yes`, `dead` and `corrupt` (missing attributes take their defaults)."""
    path = settings.outbox_path
    if action == "purge" and getattr(args, "corrupt", False):
        return _purge_corrupt(settings, args)
    if not path.exists() and action in ("status", "list", "dead"):
        print(f"no outbox at {path} yet: nothing queued")
        return exits.OK
    try:
        box = Outbox.from_settings(settings)
    except OutboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exits.FAILED
    try:
        handler = _ACTIONS.get(action)
        if handler is None:
            print(f"error: unknown outbox action {action!r}", file=sys.stderr)
            return exits.FAILED
        return handler(box, args)
    except OutboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exits.FAILED
    finally:
        box.close()


def _status(box: Outbox, args: Any) -> int:
    stats = box.stats()
    data = {"path": str(box.path), "depth": stats.depth, "oldest_created": stats.oldest_created,
            "in_flight": stats.in_flight, "dead_letters": stats.dead,
            "delivered_remembered": stats.delivered_remembered}
    _emit(getattr(args, "json", False), data, [
        f"outbox            {box.path}",
        f"queued            {stats.depth}",
        f"oldest            {_age(stats.oldest_created)}",
        f"in flight         {stats.in_flight}",
        f"dead letters      {stats.dead}",
        f"delivered (dedup) {stats.delivered_remembered}",
    ])
    return exits.OK


def _list(box: Outbox, args: Any) -> int:
    rows = box.head(int(getattr(args, "limit", None) or 20))
    data = [{"seq": r.seq, "key": r.key, "rule": r.rule, "created": r.created,
             "attempts": r.attempts, "last_error": r.last_error, "event": r.event}
            for r in rows]
    lines = [f"{r.seq:>8} {r.key} {r.rule:<24} {r.event.get('entity_ref', '?')} "
             f"age {_age(r.created)} attempts {r.attempts}"
             + (f" last error: {r.last_error}" if r.last_error else "") for r in rows]
    _emit(getattr(args, "json", False), data, lines or ["queue empty"])
    return exits.OK


def _dead(box: Outbox, args: Any) -> int:
    letters = box.dead_letters(int(getattr(args, "limit", None) or 1000))
    data = [{"key": d.key, "rule": d.rule, "status": d.status, "reason": d.reason,
             "answer": d.answer, "dead_at": d.dead_at, "event": d.event} for d in letters]
    lines = []
    for d in letters:
        status = f"HTTP {d.status}" if d.status is not None else "not sent"
        lines.append(f"{d.key} {d.rule} {d.event.get('entity_ref', '?')} ({status}, "
                     f"{_age(d.dead_at)} ago): {d.reason}")
        if d.answer:
            lines.append(f"    backend said: {d.answer[:300]}")
    _emit(getattr(args, "json", False), data, lines or ["no dead letters"])
    return exits.OK


def _retry_dead(box: Outbox, args: Any) -> int:
    keys = getattr(args, "keys", None) or None
    unknown = box.not_dead(keys) if keys is not None else []
    if keys is not None:
        keys = [key for key in keys if key not in unknown]
    moved = box.retry_dead(keys) if keys is None or keys else 0
    _emit(getattr(args, "json", False), {"requeued": moved, "unknown": unknown},
          [f"requeued {moved} dead letter(s) at the end of the queue"]
          + [f"error: no dead letter with key {key}" for key in unknown])
    return exits.FAILED if unknown else exits.OK


def _purge(box: Outbox, args: Any) -> int:
    dead = bool(getattr(args, "dead", False))
    stats = box.stats()
    what = f"{stats.dead} dead letter(s)" if dead else f"{stats.depth} queued event(s)"
    if not getattr(args, "yes", False):
        print(f"would delete {what} from {box.path}; run again with --yes to do it",
              file=sys.stderr)
        return exits.FAILED
    count = box.purge(dead=dead)
    _emit(getattr(args, "json", False), {"purged": count, "dead": dead},
          [f"deleted {count} {'dead letter(s)' if dead else 'queued event(s)'}"])
    return exits.OK


def _purge_corrupt(settings: Settings, args: Any) -> int:
    """Move a corrupt outbox aside, but never one in use or one that is healthy."""
    path = settings.outbox_path
    if not path.exists():
        _emit(getattr(args, "json", False), {"moved": []}, [f"nothing at {path}"])
        return exits.OK
    lock = exclusive(path)
    if lock is None:
        print(f"error: {path} is open in another process (an agent, `replay --forward` or "
              "an `outbox` command): stop it first; nothing was moved", file=sys.stderr)
        return exits.FAILED
    try:
        check = quick_check(path)
        if check == "ok":
            print(f"error: {path} is not corrupt (quick_check: ok); nothing was moved. To "
                  "delete the queued events instead, run `outbox purge --yes`",
                  file=sys.stderr)
            return exits.FAILED
        if not getattr(args, "yes", False):
            print(f"would move {path} (quick_check: {check[:200]}) and its -wal/-shm files "
                  "aside; run again with --yes", file=sys.stderr)
            return exits.FAILED
        moved = move_aside(path)
    finally:
        lock.close()
    _emit(getattr(args, "json", False), {"moved": [str(p) for p in moved]},
          [f"moved {p}" for p in moved])
    return exits.OK


_ACTIONS: dict[str, Callable[[Outbox, Any], int]] = {
    "status": _status, "list": _list, "dead": _dead, "retry-dead": _retry_dead,
    "purge": _purge,
}
