"""The Healert backend's HTTP API as the agent uses it: health, one event, the answer.

One keep-alive httpx client; each request is bounded as a whole (httpx's own timeouts are
per read and write). `send` turns whatever happens to one POST into an `Outcome` the
forwarder acts on; `check-backend` uses the same calls, so both see the backend alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import http
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from healert_webhook import __version__
from healert_webhook.audit import clean_text
from healert_webhook.backend_contract import ANSWER_MAX, window_start
from healert_webhook.config import ConfigError, Settings

CONNECT_TIMEOUT = 5.0
RETRY_AFTER_MAX = 3600.0
KEY_HINT = "check HEALERT_API_KEY / HEALERT_API_KEY_FILE"
# Statuses that mean the URL or the key is wrong, not the event: pause instead of dead-
# lettering the whole queue one event at a time.
AUTH_STATUSES = frozenset({401, 403})
URL_STATUSES = frozenset({404, 405})


HEALTHY = 'HTTP 200 with {"status": "ok", ...}'  # what a healthy backend answers
HEALTH_BODY_MAX = 64 * 1024  # bytes of a /health answer read; the real one is ~100 bytes
EXCERPT_MAX = 200  # characters of an unexpected answer shown to the operator
_BEARER = re.compile(r"(?i)(bearer\s+)\S+")


@dataclass(frozen=True)
class HealthReport:
    """What `GET /health` said, and what is wrong with it for this agent.

    `reachable` is True when /health answered a JSON object (then `status`, `version`
    and `auth` are what it said); `http_status` and `body` (a cleaned, bounded excerpt)
    are set whenever it answered at all, so an answer that is not a healthy backend's
    can be shown; `error` is the transport failure when it did not answer.
    """

    url: str | None
    reachable: bool
    status: str | None = None
    version: str | None = None
    auth: str | None = None
    key_set: bool = False
    error: str | None = None
    http_status: int | None = None
    body: str | None = None

    @property
    def auth_enabled(self) -> bool | None:
        """True/False as the backend reported, None when unknown."""
        return None if self.auth is None else self.auth.startswith("enabled")

    @property
    def health_url(self) -> str:
        """The URL that was asked."""
        return join_url(self.url or "", "/health")

    def problem(self) -> str | None:
        """Why the answer is not a healthy backend's and what that means for delivery;
        None when the backend answered `{"status": "ok", ...}`."""
        if self.url is None:
            return None
        if self.http_status is None:
            return (f"GET {self.health_url} failed: {self.error}; friction events stay "
                    "queued in the outbox until the backend can be reached")
        if self.http_status != 200:
            return (f"GET {self.health_url} answered HTTP {self.http_status}"
                    f"{_phrase(self.http_status)} with {_shown(self.body)}; a Healert "
                    f"backend answers {HEALTHY}. {_status_meaning(self.http_status)}")
        if not self.reachable:
            return (f"GET {self.health_url} answered HTTP 200 with {_shown(self.body)}, "
                    f"not a JSON object; a Healert backend answers {HEALTHY}. "
                    "HEALERT_BACKEND_URL may name another service (a proxy's or a UI's "
                    "page) rather than the backend's API: deliveries there would not reach "
                    "Healert, and events stay queued in the outbox")
        if self.status is None:
            return (f"GET {self.health_url} answered a JSON object without \"status\" "
                    f"({_shown(self.body)}); a Healert backend answers {HEALTHY}. "
                    "Deliveries are still attempted; whatever is not taken stays queued")
        if self.status != "ok":
            return (f"GET {self.health_url} answered status {self.status!r} (version "
                    f"{self.version}, auth {self.auth}), not \"ok\": a healthy backend "
                    f"answers {HEALTHY}. The backend says it is not healthy; deliveries are "
                    "still attempted, and events it fails to take stay queued in the outbox "
                    "and are retried with backoff")
        return None

    def warnings(self) -> list[str]:
        """Human-readable problems; empty when delivery should work."""
        if self.url is None:
            return ["no backend URL configured (HEALERT_BACKEND_URL): events stay in the "
                    "outbox and are written to the log"]
        if self.http_status is None:
            return [f"backend {self.url} unreachable ({self.error}): the agent still starts "
                    "and queues friction events"]
        found = []
        problem = self.problem()
        if problem is not None:
            found.append(problem)
        if self.auth_enabled and not self.key_set:
            found.append(f"backend {self.url} requires an API key and none is set: "
                         "set HEALERT_API_KEY or HEALERT_API_KEY_FILE")
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
        return ("HEALERT_BACKEND_URL is likely not the backend's base URL (the agent adds "
                "/health and /events to it, and follows no redirects); POST /events "
                "answered alike pauses deliveries, and events stay queued in the outbox")
    if code in AUTH_STATUSES:
        return ("The backend's /health takes no key, so something in front of it (a proxy) "
                "refuses the agent; POST /events answered alike pauses deliveries, and "
                "events stay queued in the outbox")
    return ("Deliveries are still attempted and retried with backoff; events stay queued "
            "in the outbox until the backend takes them")


def excerpt(raw: bytes, secret: str | None = None, limit: int = EXCERPT_MAX) -> str:
    """The start of an answer's body, safe to print: decoded, whitespace folded, control
    characters escaped, bearer tokens and `secret` (the agent's key) masked, bounded."""
    text = raw.decode("utf-8", "replace")
    if secret:  # masked before anything is cut, so no part of it can show
        text = text.replace(secret, "***")
    text = _BEARER.sub(r"\1***", " ".join(text.split()))
    return clean_text(text, limit)


async def _read_bounded(response: httpx.Response, limit: int) -> bytes:
    """At most `limit` bytes of the body (a huge answer is not read to its end)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]


async def check_health(settings: Settings,
                       client: httpx.AsyncClient | None = None) -> HealthReport:
    """`GET {backend}/health`; never raises (an unreachable backend is a report)."""
    url = settings.backend_url
    try:
        key = await asyncio.to_thread(settings.read_api_key)
    except ConfigError:
        key = None
    key_set = key is not None
    if url is None:
        return HealthReport(None, False, key_set=key_set)
    async with contextlib.AsyncExitStack() as stack:
        if client is None:
            client = await stack.enter_async_context(make_client(settings.forward_timeout))
        try:
            async with asyncio.timeout(settings.forward_timeout):
                async with client.stream("GET", join_url(url, "/health")) as response:
                    raw = await _read_bounded(response, HEALTH_BODY_MAX)
        except (httpx.HTTPError, TimeoutError, OSError) as exc:
            return HealthReport(url, False, key_set=key_set, error=describe_error(exc))
    code = response.status_code
    shown = excerpt(raw, key)
    try:
        body = orjson.loads(raw) if code == 200 else None
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        return HealthReport(url, False, key_set=key_set, http_status=code, body=shown,
                            error=f"/health answered HTTP {code}")
    return HealthReport(url, True, _opt_str(body.get("status")), _opt_str(body.get("version")),
                        _opt_str(body.get("auth")), key_set, http_status=code, body=shown)


def _opt_str(value: Any) -> str | None:
    """A field of the answer as text safe to print (a backend's string is not trusted)."""
    return None if value is None else clean_text(str(value), EXCERPT_MAX)


def join_url(base: str, path: str) -> str:
    """`base` (with or without a trailing slash) followed by `path`."""
    return base.rstrip("/") + path


def describe_error(exc: BaseException) -> str:
    """A short description of a transport failure (never the request's headers)."""
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def make_client(request_timeout: float) -> httpx.AsyncClient:
    """The one keep-alive client: connect 5 s; the whole-request bound (10 s by default)
    is applied around each request (httpx's own timeouts are per read/write)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(request_timeout, connect=min(CONNECT_TIMEOUT, request_timeout)),
        limits=httpx.Limits(max_connections=2, max_keepalive_connections=1),
        headers={"User-Agent": f"healert-webhook/{__version__}"},
        follow_redirects=False)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a `Retry-After` header (delta seconds or an HTTP date), capped."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return min(float(text), RETRY_AFTER_MAX)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    now = time.time() if now is None else now
    return min(max(0.0, when.timestamp() - now), RETRY_AFTER_MAX)


# -- outcomes ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    """How one request ended."""

    kind: str  # delivered | retry | pause | rejected
    label: str  # FORWARD_ATTEMPTS outcome label (bounded)
    detail: str
    status: int | None = None
    not_taken: bool = True  # certain the backend did not take it (it answered, or never got it)
    retry_after: float | None = None
    answer: str | None = None


def classify(response: httpx.Response) -> Outcome:
    """Map the backend's answer to what the forwarder does next."""
    code = response.status_code
    answer = response.text[:ANSWER_MAX]
    if 200 <= code < 300:
        return Outcome("delivered", "delivered", "ok", code)
    if code in AUTH_STATUSES:
        return Outcome("pause", "auth", f"backend refused the API key (HTTP {code}): "
                       f"{KEY_HINT}", code, answer=answer)
    if code in URL_STATUSES or 300 <= code < 400:
        return Outcome("pause", "bad_url", f"backend answered HTTP {code} for POST /events: "
                       "check HEALERT_BACKEND_URL", code, answer=answer)
    if code == 429 or code >= 500 or code in (408, 425):
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        label = "rate_limited" if code == 429 else "server_error"
        return Outcome("retry", label, f"HTTP {code}", code, retry_after=retry_after,
                       answer=answer)
    return Outcome("rejected", "rejected", f"backend refused the event (HTTP {code})", code,
                   answer=answer)




@dataclass(frozen=True)
class Finding:
    """What reading the backend said about one event whose POST may have reached it."""

    verdict: str  # found | missing | unverifiable | no_endpoint | error
    detail: str


RECENT_MAX = 500  # the backend shows an entity's 500 newest events, no more
MATCH = ("type", "actor", "timestamp", "description")


async def find_event(client: httpx.AsyncClient, base_url: str, body: dict[str, Any],
                     timeout: float, window_days: float) -> Finding:
    """Look for `body` (as it was POSTed) among its entity's recent events at the backend.

    It matches on (type, actor, timestamp, description): with the apiserver's microsecond
    request times, two different requests share all four only when the same person did
    the same thing to the same object in the same microsecond. An event the read cannot
    show — no timestamp (the backend stamped its own), older than the backend's window,
    or older than the 500 newest of a busy entity — is unverifiable.
    """
    stamp = body.get("timestamp")
    if not isinstance(stamp, str) or not stamp:
        return Finding("unverifiable", "no timestamp: the backend stamped its own")
    if stamp < window_start(window_days):
        return Finding("unverifiable", f"older than the backend's {window_days:g}-day window")
    url = join_url(base_url, "/friction/" + quote(str(body["entity_ref"]), safe=":/"))
    try:
        async with asyncio.timeout(timeout):
            response = await client.get(url)
        doc = response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, TimeoutError, OSError, ValueError) as exc:
        return Finding("error", describe_error(exc))
    if response.status_code in (404, 405):
        return Finding("no_endpoint", f"GET /friction answered HTTP {response.status_code}")
    recent = doc.get("recentEvents") if isinstance(doc, dict) else None
    if not isinstance(recent, list):
        return Finding("error", f"GET /friction answered HTTP {response.status_code} "
                       "without a list of recentEvents")
    wanted = tuple(body.get(name) for name in MATCH)
    shown = [r for r in recent if isinstance(r, dict)]
    if any(tuple(r.get(name) for name in MATCH) == wanted for r in shown):
        return Finding("found", "the backend has it")
    stamps = [r["timestamp"] for r in shown if isinstance(r.get("timestamp"), str)]
    if len(shown) >= RECENT_MAX and stamps and stamp < min(stamps):
        return Finding("unverifiable", f"older than the entity's {RECENT_MAX} newest events")
    return Finding("missing", "the backend does not have it")


def headers(key: str | None) -> dict[str, str]:
    """Request headers for POST /events: JSON, and the bearer key when there is one."""
    found = {"Content-Type": "application/json"}
    if key:
        found["Authorization"] = f"Bearer {key}"
    return found


async def post_event(client: httpx.AsyncClient, base_url: str, key: str | None,
                     body: dict[str, Any], timeout: float) -> httpx.Response:
    """POST one friction event; raises httpx.HTTPError or TimeoutError."""
    async with asyncio.timeout(timeout):
        return await client.post(join_url(base_url, "/events"), content=orjson.dumps(body),
                                 headers=headers(key))


async def send(client: httpx.AsyncClient, base_url: str, key: str | None,
               body: dict[str, Any], timeout: float) -> Outcome:
    """POST one friction event and say what happened, transport failures included."""
    try:
        response = await post_event(client, base_url, key, body, timeout)
    except (httpx.HTTPError, TimeoutError, OSError) as exc:
        timed_out = isinstance(exc, TimeoutError | httpx.TimeoutException)
        # A failed connect means the request never left; anything later (a read
        # timeout, a dropped connection) may have reached the backend.
        not_sent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout
                              | httpx.PoolTimeout)
        return Outcome("retry", "timeout" if timed_out else "transport_error",
                       describe_error(exc), not_taken=not_sent)
    return classify(response)
