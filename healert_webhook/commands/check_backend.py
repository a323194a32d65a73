"""`healert-webhook check-backend`: is the backend reachable, and does it take the key?

It prints one step a line (or one JSON object with `--json`): the health answer and
what it means for delivery, the key, the key's check by the backend, and with
`--send-test` one real test event. Exit codes (exits.py): OK, CONFIG (no backend URL,
key file unusable), UNREACHABLE, KEY_REFUSED or EVENT_REFUSED.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import httpx

from healert_webhook import __version__, backend, exits
from healert_webhook import health as health_words
from healert_webhook.backend import Answer, HealthReport, describe_error
from healert_webhook.commands.base import Settable
from healert_webhook.config import ConfigError, Settings, env

NAME = "check-backend"
HELP = "check the backend's health and the API key"
GROUPS: tuple[str, ...] = ("backend",)
TEST_EVENT: dict[str, Any] = {
    "entity_ref": "component:default/healert-webhook",
    "type": "healert-webhook-test",
    "severity": "low",
    "points": 1,
    "description": "connectivity test sent by `healert-webhook check-backend --send-test`",
    "workflow": "check-backend",
}


def add_arguments(parser: argparse.ArgumentParser, add_settings: Settable) -> None:
    """--send-test and --json."""
    add_settings(parser)
    parser.add_argument("--send-test", action="store_true",
                        help="also send one real test event (type healert-webhook-test, "
                             "1 point on component:default/healert-webhook)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Check the configured backend."""
    return check_backend(settings, args.send_test, as_json=args.json)


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
        report.step("config", False, f"no backend URL: set {env('backend_url')} or --backend-url")
        return report.finish(exits.CONFIG)
    try:
        key = await asyncio.to_thread(settings.read_api_key)
    except ConfigError as exc:
        report.step("key", False, str(exc))
        return report.finish(exits.CONFIG)
    async with backend.make_client(settings.forward_timeout) as client:
        health = await backend.check_health(settings, client)
        code = _report_health(health, report)
        if code != exits.OK:
            return report.finish(code)
        _report_key(settings, key, health, report)
        if health.auth_enabled:
            code = await _check_auth(client, settings, key, report)
            if code != exits.OK:
                return report.finish(code)
        if send_test:
            code = await _send_test(client, settings, key, report)
    return report.finish(code)


def _report_health(health: HealthReport, report: _Report) -> int:
    """One step: the backend is healthy, or what it answered instead and what that means."""
    if health.http_status is None:
        report.step("health", False, f"{health.url} unreachable: {health.error}; friction "
                    "events stay queued in the outbox until it can be reached")
        return exits.UNREACHABLE
    problem = health_words.problem(health)
    if problem is not None:
        report.step("health", False, problem)
        return exits.UNREACHABLE
    report.step("health", True, f"{health.url}: status ok, version {health.version}, "
                f"auth {health.auth}")
    return exits.OK


def _report_key(settings: Settings, key: str | None, health: HealthReport,
                report: _Report) -> None:
    source = (f"from {env('api_key_file')} {settings.api_key_file}"
              if settings.api_key_file else f"from {env('api_key')}")
    if key:
        report.step("key", True, f"set ({len(key)} characters, {source})")
    elif health.auth_enabled:
        report.step("key", False, "the backend requires a key and none is set: set "
                    f"{env('api_key')} or {env('api_key_file')}")
    else:
        report.step("key", True, "none set; the backend does not require one")


async def _post(client: httpx.AsyncClient, settings: Settings, key: str | None,
                body: dict[str, Any]) -> Answer:
    return await backend.post_event(client, settings.backend_url or "", key, body,
                                    settings.forward_timeout)


async def _check_auth(client: httpx.AsyncClient, settings: Settings, key: str | None,
                      report: _Report) -> int:
    """POST an empty object: the key is checked before the body (as a FastAPI dependency
    is), so 401/403 means a refused key and 422 an accepted one; nothing is recorded. Any
    other answer (a 500...) says nothing about the key: the backend is unhealthy."""
    try:
        response = await _post(client, settings, key, {})
    except (httpx.HTTPError, TimeoutError, OSError) as exc:
        report.step("auth", False, f"POST /events failed: {describe_error(exc)}")
        return exits.UNREACHABLE
    code = response.status
    if code in (401, 403):
        report.step("auth", False, f"the backend refused the key (HTTP {code}): check "
                    f"{env('api_key')} / {env('api_key_file')}")
        return exits.KEY_REFUSED
    if code == 429:
        report.step("auth", None, "rate-limited (HTTP 429): the key could not be checked; "
                    "try again in a minute")
    elif code == 422:
        report.step("auth", True, f"key accepted (an empty event was answered HTTP {code})")
    else:  # a 5xx, or not the backend's contract: the key was never looked at
        report.step("auth", False, f"the key could not be checked: POST /events answered "
                    f"HTTP {code} instead of 422 for an empty event: "
                    f"{backend.excerpt(response.body, key, 200)}")
        return exits.UNREACHABLE
    return exits.OK


async def _send_test(client: httpx.AsyncClient, settings: Settings, key: str | None,
                     report: _Report) -> int:
    event = {**TEST_EVENT, "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
             "actor": f"healert-webhook/{__version__}"}
    try:
        response = await _post(client, settings, key, event)
    except (httpx.HTTPError, TimeoutError, OSError) as exc:
        report.step("test", False, f"POST /events failed: {describe_error(exc)}")
        return exits.UNREACHABLE
    code = response.status
    if 200 <= code < 300:
        report.step("test", True, f"test event delivered to {event['entity_ref']} "
                    f"(HTTP {code}; it adds {event['points']} point to that entity)")
        return exits.OK
    if code in (401, 403):
        report.step("test", False, f"the backend refused the key (HTTP {code})")
        return exits.KEY_REFUSED
    report.step("test", False, f"test event refused (HTTP {code}): "
                f"{backend.excerpt(response.body, key, 500)}")
    return exits.EVENT_REFUSED


