"""The Healert backend's HTTP API as the agent uses it: health, one event, the answer.

One keep-alive httpx client; each request is bounded as a whole (httpx's own timeouts are
per read and write). `send` turns whatever happens to one POST into an `Outcome` the
forwarder acts on; `check-backend` uses the same calls, so both see the backend alike.

Nothing the backend answers is trusted: every answer is streamed and read only up to a
cap for its kind (`POST_ANSWER_MAX`, `FRICTION_ANSWER_MAX`, `HEALTH_BODY_MAX`), compressed
ones decoded within that cap; JSON is parsed by orjson, which refuses nesting deeper than
1024 without recursing; `Retry-After` is taken only as ASCII digits or an HTTP date.
The backend URL may carry credentials (`http://user:password@host`): `shown_url` is the
one form of it that is ever logged or printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import re
import time
import zlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from healert_webhook import __version__
from healert_webhook.backend_contract import ANSWER_MAX, window_start
from healert_webhook.config import ConfigError, Settings, env
from healert_webhook.logs import redact_urls, shown_url
from healert_webhook.text import clean_text

__all__ = ["redact_urls", "shown_url"]  # with the rest: the URL helpers, from one place

CONNECT_TIMEOUT = 5.0
RETRY_AFTER_MAX = 3600.0
KEY_HINT = f"check {env('api_key')} / {env('api_key_file')}"
# Statuses that mean the URL or the key is wrong, not the event: pause instead of dead-
# lettering the whole queue one event at a time.
AUTH_STATUSES = frozenset({401, 403})
URL_STATUSES = frozenset({404, 405})
# A gateway's answers for a request it passed on and then lost the backend's answer to
# (upstream reset, upstream timeout): the backend may have stored the event.
GATEWAY_LOST = frozenset({502, 504})


HEALTH_BODY_MAX = 64 * 1024  # bytes of a /health answer read; the real one is ~100 bytes
# POST /events answers `{"status": "ok", ...}` (tens of bytes), or a 422 whose detail lists
# one item per field at fault (a few KiB at worst for an event wrong in every field):
# 64 KiB leaves ten times that, and only ANSWER_MAX characters are ever kept.
POST_ANSWER_MAX = 64 * 1024
# GET /friction shows at most 500 events, each five fields the backend bounds (timestamp 40,
# actor 200, type 50, description 500, workflow 200 characters: 990). JSON-escaped, a
# character takes at most 12 bytes (a character outside the BMP written as two \uXXXX
# escapes), so 500 events take at most 500 * (990 * 12 + 100) bytes, about 5.7 MiB, plus
# the score and the entity ref. Real answers are tens of KiB: 8 MiB is the worst case with
# margin, and a backend answering more is not one to trust with "missing".
FRICTION_ANSWER_MAX = 8 * 1024 * 1024
PARSE_IN_THREAD = 256 * 1024  # bytes of JSON above which parsing leaves the event loop
EXCERPT_MAX = 200  # characters of an unexpected answer shown to the operator
_BEARER = re.compile(r"(?i)(bearer\s+)\S+")
_DELTA_SECONDS = re.compile(r"[0-9]{1,12}")  # ASCII digits only: str.isdigit takes "²"


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


def excerpt(raw: bytes, secret: str | None = None, limit: int = EXCERPT_MAX) -> str:
    """The start of an answer's body, safe to print: decoded, whitespace folded, control
    characters escaped, bearer tokens and `secret` (the agent's key) masked, bounded."""
    text = raw.decode("utf-8", "replace")
    if secret:  # masked before anything is cut, so no part of it can show
        text = text.replace(secret, "***")
    text = _BEARER.sub(r"\1***", " ".join(text.split()))
    return clean_text(text, limit)


@dataclass(frozen=True)
class Answer:
    """What the backend answered: status, headers and the body read up to a cap."""

    status: int
    headers: httpx.Headers
    body: bytes
    complete: bool  # False: the body went on past the cap and was not read to its end

    @property
    def text(self) -> str:
        """The body (as far as it was read) as text, undecodable bytes replaced."""
        return self.body.decode("utf-8", "replace")


class _Decoder:
    """Decodes a gzip or deflate body without ever making more than the cap allows
    (httpx's own decoding inflates a whole network chunk at once, up to 1000 times it)."""

    def __init__(self, encoding: str) -> None:
        names = [name.strip().lower() for name in encoding.split(",") if name.strip()]
        names = [name for name in names if name != "identity"]
        self.unsupported: str | None = None
        self._zlib: Any = None
        if not names:
            return
        if len(names) > 1 or names[0] not in ("gzip", "x-gzip", "deflate"):
            self.unsupported = encoding[:50]
            return
        # 32 + window bits: zlib or gzip header, found out from the data
        self._zlib = zlib.decompressobj(32 + zlib.MAX_WBITS)

    def decode(self, chunk: bytes, room: int) -> bytes:
        """Up to `room` + 1 decoded bytes of `chunk` (more than `room`: over the cap)."""
        if self._zlib is None:
            return chunk
        return bytes(self._zlib.decompress(chunk, room + 1))


async def read_capped(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """The body, read as it streams in until `limit` bytes (decoded); and whether it
    ended within them. Memory never holds more than `limit` and one network chunk."""
    decoder = _Decoder(response.headers.get("content-encoding", ""))
    if decoder.unsupported is not None:
        return b"", False
    body = bytearray()
    try:
        async for chunk in response.aiter_raw():
            data = decoder.decode(chunk, limit - len(body))
            if len(body) + len(data) > limit:
                body += data[:limit - len(body)]
                return bytes(body), False
            body += data
    except zlib.error:
        return bytes(body), False
    return bytes(body), True


async def fetch(client: httpx.AsyncClient, method: str, url: str, *, limit: int,
                timeout: float, **kwargs: Any) -> Answer:
    """One request, its answer read up to `limit` bytes, all within `timeout` seconds.

    Raises httpx.HTTPError, TimeoutError or OSError when the exchange fails."""
    async with asyncio.timeout(timeout):
        async with client.stream(method, url, **kwargs) as response:
            body, complete = await read_capped(response, limit)
    return Answer(response.status_code, response.headers, body, complete)


async def parse_json(raw: bytes) -> Any:
    """`raw` parsed by orjson (nesting past 1024 refused without recursion), off the event
    loop when it is large; raises ValueError when it is not JSON."""
    if len(raw) > PARSE_IN_THREAD:
        return await asyncio.to_thread(orjson.loads, raw)
    return orjson.loads(raw)


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
    shown_as = shown_url(url)  # the report is shown: never the URL's credentials
    async with contextlib.AsyncExitStack() as stack:
        if client is None:
            client = await stack.enter_async_context(make_client(settings.forward_timeout))
        try:
            answer = await fetch(client, "GET", join_url(url, "/health"),
                                 limit=HEALTH_BODY_MAX, timeout=settings.forward_timeout)
        except (httpx.HTTPError, TimeoutError, OSError) as exc:
            return HealthReport(shown_as, False, key_set=key_set, error=describe_error(exc))
    code = answer.status
    shown = excerpt(answer.body, key)
    try:
        body = await parse_json(answer.body) if code == 200 and answer.complete else None
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return HealthReport(shown_as, False, key_set=key_set, http_status=code, body=shown,
                            error=f"/health answered HTTP {code}")
    return HealthReport(shown_as, True, _opt_str(body.get("status")),
                        _opt_str(body.get("version")), _opt_str(body.get("auth")), key_set,
                        http_status=code, body=shown)


def _opt_str(value: Any) -> str | None:
    """A field of the answer as text safe to print (a backend's string is not trusted)."""
    return None if value is None else clean_text(str(value), EXCERPT_MAX)


def join_url(base: str, path: str) -> str:
    """`base` (with or without a trailing slash) followed by `path`."""
    return base.rstrip("/") + path


def describe_error(exc: BaseException) -> str:
    """A short description of a transport failure (never the request's headers, nor the
    credentials of a URL it quotes)."""
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return "timed out"
    return redact_urls(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


def make_client(request_timeout: float) -> httpx.AsyncClient:
    """The one keep-alive client: connect 5 s; the whole-request bound (10 s by default)
    is applied around each request (httpx's own timeouts are per read/write). It asks
    for answers uncompressed: a compressed one is still decoded, within its cap."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(request_timeout, connect=min(CONNECT_TIMEOUT, request_timeout)),
        limits=httpx.Limits(max_connections=2, max_keepalive_connections=1),
        headers={"User-Agent": f"healert-webhook/{__version__}",
                 "Accept-Encoding": "identity"},
        follow_redirects=False)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a `Retry-After` header, capped: ASCII digits (delta seconds) or an
    HTTP date; anything else is ignored (None), as if there were no header."""
    if value is None:
        return None
    text = value.strip()
    if _DELTA_SECONDS.fullmatch(text):
        return min(float(text), RETRY_AFTER_MAX)
    if not text.isascii():
        return None
    try:
        when = email.utils.parsedate_to_datetime(text)
        stamp = when.timestamp()
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    now = time.time() if now is None else now
    return min(max(0.0, stamp - now), RETRY_AFTER_MAX)


# -- outcomes ------------------------------------------------------------------------------

# Every label of healert_forward_attempts_total an Outcome can carry.
OUTCOME_LABELS = ("delivered", "auth", "bad_url", "rate_limited", "server_error", "rejected",
                  "timeout", "transport_error", "answer_too_large")


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


def classify(response: Answer) -> Outcome:
    """Map the backend's answer to what the forwarder does next."""
    code = response.status
    if not response.complete:
        # Whatever the status says, an answer this long is not the backend's: the event
        # may have been taken, so it counts as failed and is looked for before a resend.
        return Outcome("retry", "answer_too_large", f"the answer to POST /events (HTTP "
                       f"{code}) went on past {POST_ANSWER_MAX} bytes", code,
                       not_taken=False)
    if 200 <= code < 300:
        return Outcome("delivered", "delivered", "ok", code,
                       answer=excerpt(response.body, limit=EXCERPT_MAX))
    # kept with the row and logged: a token the backend or a proxy echoed is masked and
    # control characters escaped here, once, for every reader
    answer = excerpt(response.body, limit=ANSWER_MAX)
    if code in AUTH_STATUSES:
        return Outcome("pause", "auth", f"backend refused the API key (HTTP {code}): "
                       f"{KEY_HINT}", code, answer=answer)
    if code in URL_STATUSES or 300 <= code < 400:
        return Outcome("pause", "bad_url", f"backend answered HTTP {code} for POST /events: "
                       f"check {env('backend_url')}", code, answer=answer)
    if code == 429 or code >= 500 or code in (408, 425):
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        label = "rate_limited" if code == 429 else "server_error"
        return Outcome("retry", label, f"HTTP {code}", code,
                       not_taken=code not in GATEWAY_LOST, retry_after=retry_after,
                       answer=answer)
    return Outcome("rejected", "rejected", f"backend refused the event (HTTP {code})", code,
                   answer=answer)




@dataclass(frozen=True)
class Finding:
    """What reading the backend said about one event whose POST may have reached it."""

    verdict: str  # found | missing | unverifiable | no_endpoint | error
    detail: str
    asked: bool = True  # False: decided without a request (the backend said nothing)


RECENT_MAX = 500  # the backend shows an entity's 500 newest events, no more
MATCH = ("type", "actor", "timestamp", "description")


async def find_event(client: httpx.AsyncClient, base_url: str, body: dict[str, Any],
                     timeout: float, window_days: float) -> Finding:
    """Look for `body` (as it was POSTed) among its entity's recent events at the backend.

    It matches on (type, actor, timestamp, description): with the apiserver's microsecond
    request times, two different requests share all four only when the same person did
    the same thing to the same object in the same microsecond. An event the read cannot
    show — no timestamp (the backend stamped its own), older than the backend's window,
    or older than the 500 newest of a busy entity or tied with the oldest of them (the
    page may end inside a tie) — is unverifiable.
    """
    stamp = body.get("timestamp")
    if not isinstance(stamp, str) or not stamp:
        return Finding("unverifiable", "no timestamp: the backend stamped its own", False)
    if stamp < window_start(window_days):
        return Finding("unverifiable", f"older than the backend's {window_days:g}-day window",
                       False)
    url = join_url(base_url, "/friction/" + quote(str(body["entity_ref"]), safe=":/"))
    try:
        answer = await fetch(client, "GET", url, limit=FRICTION_ANSWER_MAX, timeout=timeout)
    except (httpx.HTTPError, TimeoutError, OSError) as exc:
        return Finding("error", describe_error(exc))
    if answer.status in (404, 405):
        return Finding("no_endpoint", f"GET /friction answered HTTP {answer.status}")
    if not answer.complete:
        return Finding("error", f"GET /friction answered HTTP {answer.status} with more "
                       f"than {FRICTION_ANSWER_MAX} bytes, more than 500 events can take")
    if answer.status != 200:
        return Finding("error", f"GET /friction answered HTTP {answer.status}")
    try:
        doc = await parse_json(answer.body)
    except ValueError as exc:
        return Finding("error", f"GET /friction answered what is not JSON ({exc})"[:300])
    recent = doc.get("recentEvents") if isinstance(doc, dict) else None
    if not isinstance(recent, list):
        return Finding("error", "GET /friction answered HTTP 200 without a list of "
                       "recentEvents")
    wanted = tuple(body.get(name) for name in MATCH)
    shown = [r for r in recent if isinstance(r, dict)]
    if any(tuple(r.get(name) for name in MATCH) == wanted for r in shown):
        return Finding("found", "the backend has it")
    stamps = [r["timestamp"] for r in shown if isinstance(r.get("timestamp"), str)]
    if len(shown) >= RECENT_MAX and stamps:
        oldest = min(stamps)
        if stamp < oldest:
            return Finding("unverifiable",
                           f"older than the entity's {RECENT_MAX} newest events")
        if stamp == oldest:  # the page may end inside a tie (one event, several rules)
            return Finding("unverifiable", f"at the edge of the entity's {RECENT_MAX} "
                           "newest events, among others of its timestamp")
    return Finding("missing", "the backend does not have it")


def headers(key: str | None) -> dict[str, str]:
    """Request headers for POST /events: JSON, and the bearer key when there is one."""
    found = {"Content-Type": "application/json"}
    if key:
        found["Authorization"] = f"Bearer {key}"
    return found


async def post_event(client: httpx.AsyncClient, base_url: str, key: str | None,
                     body: dict[str, Any], timeout: float) -> Answer:
    """POST one friction event, its answer read up to `POST_ANSWER_MAX` bytes; raises
    httpx.HTTPError, TimeoutError or OSError."""
    return await fetch(client, "POST", join_url(base_url, "/events"), limit=POST_ANSWER_MAX,
                       timeout=timeout, content=orjson.dumps(body), headers=headers(key))


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
