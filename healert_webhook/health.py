"""What the backend's `GET /health` answer means for delivery, in words an operator acts on.

`check-backend` prints it, and the forwarder logs it when it starts: the same answer is
explained the same way in both places.
"""

from __future__ import annotations

import http

from healert_webhook.backend import AUTH_STATUSES, URL_STATUSES, HealthReport
from healert_webhook.config import env

HEALTHY = 'HTTP 200 with {"status": "ok", ...}'  # what a healthy backend answers


def problem(report: HealthReport) -> str | None:
    """Why the answer is not a healthy backend's and what that means for delivery;
    None when the backend answered `{"status": "ok", ...}`."""
    if report.url is None:
        return None
    if report.http_status is None:
        return (f"GET {report.health_url} failed: {report.error}; friction events stay "
                "queued in the outbox until the backend can be reached")
    if report.http_status != 200:
        return (f"GET {report.health_url} answered HTTP {report.http_status}"
                f"{_phrase(report.http_status)} with {_shown(report.body)}; a Healert "
                f"backend answers {HEALTHY}. {_status_meaning(report.http_status)}")
    if not report.reachable:
        return (f"GET {report.health_url} answered HTTP 200 with {_shown(report.body)}, "
                f"not a JSON object; a Healert backend answers {HEALTHY}. "
                f"{env('backend_url')} may name another service (a proxy's or a UI's "
                "page) rather than the backend's API: deliveries there would not reach "
                "Healert, and events stay queued in the outbox")
    if report.status is None:
        return (f"GET {report.health_url} answered a JSON object without \"status\" "
                f"({_shown(report.body)}); a Healert backend answers {HEALTHY}. "
                "Deliveries are still attempted; whatever is not taken stays queued")
    if report.status != "ok":
        return (f"GET {report.health_url} answered status {report.status!r} (version "
                f"{report.version}, auth {report.auth}), not \"ok\": a healthy backend "
                f"answers {HEALTHY}. The backend says it is not healthy; deliveries are "
                "still attempted, and events it fails to take stay queued in the outbox "
                "and are retried with backoff")
    return None

def warnings(report: HealthReport) -> list[str]:
    """Human-readable problems; empty when delivery should work."""
    if report.url is None:
        return [f"no backend URL configured ({env('backend_url')}): events stay in the "
                "outbox and are written to the log"]
    if report.http_status is None:
        return [f"backend {report.url} unreachable ({report.error}): the agent still starts "
                "and queues friction events"]
    found = []
    wrong = problem(report)
    if wrong is not None:
        found.append(wrong)
    if report.auth_enabled and not report.key_set:
        found.append(f"backend {report.url} requires an API key and none is set: "
                     f"set {env('api_key')} or {env('api_key_file')}")
    return found


def _phrase(code: int) -> str:
    try:
        return f" {http.HTTPStatus(code).phrase}"
    except ValueError:
        return ""


def _shown(body: str | None) -> str:
    # not repr(): the excerpt is escaped already, and repr would double its backslashes
    return f"body '{body}'" if body else "an empty body"


def _status_meaning(code: int) -> str:
    """What an unhealthy /health answer means for POST /events (see `classify`)."""
    if code in URL_STATUSES or 300 <= code < 400:
        return (f"{env('backend_url')} is likely not the backend's base URL (the agent adds "
                "/health and /events to it, and follows no redirects); POST /events "
                "answered alike pauses deliveries, and events stay queued in the outbox")
    if code in AUTH_STATUSES:
        return ("The backend's /health takes no key, so something in front of it (a proxy) "
                "refuses the agent; POST /events answered alike pauses deliveries, and "
                "events stay queued in the outbox")
    return ("Deliveries are still attempted and retried with backoff; events stay queued "
            "in the outbox until the backend takes them")


