"""The apiserver's audit webhook: a raw ASGI app (no framework on the hot path).

Per request: route on the path (the query, `?timeout=30s`, is ignored), authenticate
(client certificate names, bearer token), check method, content type and size, read the
body under the limit, ONE `orjson.loads`, detect, store the friction events in the outbox
on a dedicated thread, and answer `200 {}` only once the store returned (DESIGN §7).

A store failure answers 503 with `Retry-After`: the outbox transaction stored nothing, so
the apiserver's retry is safe. Bad items inside a good batch are counted by the pipeline
and never fail the batch. Detection runs on the event loop: it is the cheap part (most
events end after three dict lookups) and a thread hop per batch would cost more.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any, Protocol

import orjson

from healert_webhook import audit, metrics
from healert_webhook.config import Settings
from healert_webhook.detect import Friction
from healert_webhook.outbox import OutboxError
from healert_webhook.pipeline import Pipeline, gc_paused
from healert_webhook.tls import PEER_EXTENSION, FileWatch, names_allowed

log = logging.getLogger(__name__)

RETRY_AFTER = b"5"
# The apiserver gives a webhook request 30 s, then gives up: a body still arriving after
# that comes from a client that is gone or hostile, and it holds a share of the body budget.
BODY_TIMEOUT = 30.0
SOURCE = "webhook"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class StoreResultLike(Protocol):
    """What the webhook reads of `Outbox.store`'s answer."""

    @property
    def duplicates(self) -> int:
        """Friction events not stored because they were already seen."""
        ...


class FrictionStore(Protocol):
    """The part of `outbox.Outbox` the webhook uses (blocking, thread-safe)."""

    def store(self, frictions: Sequence[Friction]) -> StoreResultLike:
        """Store `frictions` in one transaction or raise OutboxError."""
        ...


class BodyBudget:
    """Bytes of request bodies held at once across all requests (read, parsed, evaluated).

    A parsed body takes about ten times its size in Python objects, so without a shared
    budget fifteen concurrent 60 MiB batches would need gigabytes. A request that cannot
    get its share within `wait` seconds is answered 503 with Retry-After before anything
    of it is stored, which client-go retries within the same attempt.
    """

    def __init__(self, limit: int, wait: float = 5.0) -> None:
        self.limit = limit
        self.wait = wait
        self.used = 0
        self._freed = asyncio.Condition()

    async def take(self, size: int) -> bool:
        """Reserve `size` bytes; False when they did not become free in time."""
        if self.used + size <= self.limit or self.used == 0:
            self.used += size
            return True
        async with self._freed:
            try:
                await asyncio.wait_for(self._freed.wait_for(
                    lambda: self.used + size <= self.limit or self.used == 0), self.wait)
            except TimeoutError:
                return False
            self.used += size
            return True

    async def give(self, size: int) -> None:
        """Return `size` reserved bytes and wake the requests waiting for them."""
        self.used -= size
        if size:
            async with self._freed:
                self._freed.notify_all()


class TokenError(ValueError):
    """The token file cannot be used; the message says why (never the tokens)."""


def parse_tokens(text: str) -> list[bytes]:
    """Tokens of a token file: one per line, blank lines and `#` comments ignored."""
    tokens = []
    for line in text.splitlines():
        token = line.strip()
        if token and not token.startswith("#"):
            tokens.append(token.encode("utf-8"))
    return tokens


class TokenAuth:
    """The accepted bearer tokens: the token file's lines plus HEALERT_WEBHOOK_TOKEN.

    Several tokens are accepted at once, so a rotation can add the new token, roll the
    apiserver over, then drop the old one. The file is re-read when it changes.
    """

    def __init__(self, path: Path | None, env_token: str | None) -> None:
        self.path = path
        self._env = [env_token.strip().encode("utf-8")] if env_token and env_token.strip() \
            else []
        self._watch = FileWatch(path) if path is not None else None
        self._file: list[bytes] = self._read() if path is not None else []
        if not self.tokens:
            raise TokenError(f"HEALERT_WEBHOOK_TOKEN_FILE {path}: holds no token")

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenAuth | None:
        """Tokens from the token file and HEALERT_WEBHOOK_TOKEN; None when neither is set."""
        env_token = settings.webhook_token
        if settings.webhook_token_file is None and not (env_token and env_token.strip()):
            return None
        return cls(settings.webhook_token_file, env_token)

    @property
    def tokens(self) -> list[bytes]:
        """Every token accepted right now."""
        return self._file + self._env

    def _read(self) -> list[bytes]:
        assert self.path is not None
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
            raise TokenError(f"HEALERT_WEBHOOK_TOKEN_FILE {self.path}: {why}") from exc
        return parse_tokens(text)

    def reload(self, force: bool = False) -> bool:
        """Re-read the token file if it changed (blocking); keep the old tokens if unusable."""
        if self._watch is None or not self._watch.changed(force):
            return False
        try:
            tokens = self._read()
        except TokenError as exc:
            log.error("token file reload failed, keeping the previous tokens: %s", exc)
            self._watch.forget()
            return False
        if not tokens and not self._env:
            log.error("token file %s now holds no token, keeping the previous tokens",
                      self.path)
            return False
        self._file = tokens  # one assignment: a request sees the old list or the new one
        log.info("webhook tokens reloaded from %s: %d accepted", self.path, len(tokens))
        return True

    def check(self, authorization: bytes | None) -> str | None:
        """None when the Authorization header carries an accepted token, else the reason."""
        if not authorization:
            return "missing_token"
        scheme, _, token = authorization.partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            return "missing_token"
        token = token.strip()
        ok = False
        for accepted in self.tokens:  # compare against all: timing says nothing of which
            ok |= hmac.compare_digest(token, accepted)
        return None if ok else "bad_token"


@dataclass
class Request:
    """The headers the webhook looks at, gathered in one pass."""

    content_type: bytes = b""
    content_length: bytes | None = None
    authorization: bytes | None = None


def _gather(headers: Sequence[tuple[bytes, bytes]]) -> Request:
    req = Request()
    for name, value in headers:
        if name == b"content-type":
            req.content_type = value
        elif name == b"content-length":
            req.content_length = value
        elif name == b"authorization":
            req.authorization = value
    return req


def is_json(content_type: bytes) -> bool:
    """True for `application/json`, with or without parameters such as charset."""
    return content_type.partition(b";")[0].strip().lower() == b"application/json"


def _error(message: str) -> bytes:
    return orjson.dumps({"error": message})


class _Reject(Exception):
    """Answer `code` with a JSON error; `reason` goes to the log (and maybe a metric)."""

    def __init__(self, code: int, message: str, headers: Sequence[tuple[bytes, bytes]] = (),
                 close: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = list(headers)
        self.close = close


class _Disconnected(Exception):
    """The client went away while sending the body."""


class WebhookApp:
    """The ASGI app for the apiserver's audit webhook (see the module docstring)."""

    def __init__(self, *, pipeline: Pipeline, outbox: FrictionStore, executor: Executor,
                 path: str = "/audit", max_body_bytes: int = 64 * 1024 * 1024,
                 tokens: TokenAuth | None = None,
                 client_names: frozenset[str] = frozenset(),
                 budget: BodyBudget | None = None,
                 body_timeout: float = BODY_TIMEOUT) -> None:
        self.pipeline = pipeline
        self.outbox = outbox
        self.executor = executor
        self.path = path
        self.max_body_bytes = max_body_bytes
        self.tokens = tokens
        self.client_names = client_names
        self.budget = budget or BodyBudget(max_body_bytes)
        self.body_timeout = body_timeout
        self._codes: dict[int, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one HTTP request (lifespan and websockets are off in the server)."""
        if scope["type"] != "http":
            return
        start = perf_counter()
        try:
            code, body, headers = await self._serve(scope, receive)
        except _Reject as rej:
            code, body, headers = rej.code, _error(rej.message), rej.headers
            self._log_reject(scope, rej)
            if rej.close:  # the body was not read: do not parse the rest as a request
                headers = [*headers, (b"connection", b"close")]
        except _Disconnected:
            self._count(499, start)
            return
        except Exception:  # a bug must still be answered, counted and logged
            log.exception("webhook request failed")
            code, body, headers = 500, _error("internal error"), [(b"connection", b"close")]
        await send({"type": "http.response.start", "status": code,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", b"%d" % len(body)), *headers]})
        await send({"type": "http.response.body", "body": body})
        self._count(code, start)

    def _count(self, code: int, start: float) -> None:
        child = self._codes.get(code)
        if child is None:
            child = self._codes[code] = metrics.WEBHOOK_REQUESTS.labels(str(code))
        child.inc()
        metrics.WEBHOOK_DURATION.observe(perf_counter() - start)

    @staticmethod
    def _log_reject(scope: Scope, rej: _Reject) -> None:
        client = scope.get("client")
        who = client[0] if client else "?"
        log.warning("webhook request from %s refused with %d: %s", who, rej.code, rej.message)

    async def _serve(self, scope: Scope, receive: Receive
                     ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        if scope["path"] != self.path:
            raise _Reject(404, "not found", close=True)
        req = _gather(scope["headers"])
        self._authenticate(scope, req)
        if scope["method"] != "POST":
            raise _Reject(405, "only POST is accepted", [(b"allow", b"POST")], close=True)
        if not is_json(req.content_type):
            raise _Reject(415, "Content-Type must be application/json", close=True)
        declared = self._check_length(req.content_length)
        held = [0]
        try:
            body = await self._receive_body(receive, declared, held)
            metrics.WEBHOOK_BODY_BYTES.observe(len(body))
            with gc_paused():
                items = self._parse(body)
                del body  # the parsed events are all that is needed from here on
                frictions, _stats = self.pipeline.detect(items, SOURCE)
                del items  # freed by reference counting before the collector runs again
        finally:
            await self.budget.give(held[0])
        if frictions:
            await self._store(frictions)
        return 200, b"{}", []

    def _authenticate(self, scope: Scope, req: Request) -> None:
        if self.client_names:
            peer = (scope.get("extensions") or {}).get(PEER_EXTENSION)
            names: tuple[str, ...] = peer["names"] if peer else ()
            if not names_allowed(names, self.client_names):
                metrics.WEBHOOK_AUTH_FAILURES.labels("client_name").inc()
                shown = ", ".join(names) or "no client certificate"
                raise _Reject(403, f"client certificate name not allowed: {shown}",
                              close=True)
        if self.tokens is not None:
            reason = self.tokens.check(req.authorization)
            if reason is not None:
                metrics.WEBHOOK_AUTH_FAILURES.labels(reason).inc()
                raise _Reject(401, f"unauthorized: {reason.replace('_', ' ')}",
                              [(b"www-authenticate", b"Bearer")], close=True)

    def _check_length(self, declared: bytes | None) -> int | None:
        if declared is None:
            return None
        try:
            length = int(declared)
        except ValueError:
            raise _Reject(400, "bad Content-Length", close=True) from None
        if length > self.max_body_bytes:
            raise _Reject(413, f"body of {length} bytes is over the limit of "
                          f"{self.max_body_bytes}", close=True)
        return length

    async def _receive_body(self, receive: Receive, declared: int | None,
                            held: list[int]) -> bytes:
        """Reserve the budget and read the body, all within `body_timeout` (else 408)."""
        try:
            async with asyncio.timeout(self.body_timeout):
                if declared is not None:
                    await self._reserve(declared, held)
                return await self._read(receive, held)
        except TimeoutError:
            raise _Reject(408, f"body not received within {self.body_timeout:g} s",
                          close=True) from None

    async def _reserve(self, size: int, held: list[int]) -> None:
        if not await self.budget.take(size):
            metrics.WEBHOOK_BUSY.inc()
            raise _Reject(503, "too many request bodies in memory, retry later",
                          [(b"retry-after", b"1")], close=True)
        held[0] += size

    async def _read(self, receive: Receive, held: list[int]) -> bytes:
        """The whole body, or 413 as soon as it passes the limit (chunked bodies too).

        Without a declared length the memory budget is reserved chunk by chunk.
        """
        chunks: list[bytes] = []
        total = 0
        limit = self.max_body_bytes
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            if chunk:
                total += len(chunk)
                if total > limit:
                    raise _Reject(413, f"body is over the limit of {limit} bytes", close=True)
                if total > held[0]:
                    await self._reserve(total - held[0], held)
                chunks.append(chunk)
            more = message.get("more_body", False)
        # One join at the end: appending to one growing bytes object would copy quadratically.
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    @staticmethod
    def _parse(body: bytes) -> list[Any]:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            metrics.INVALID_EVENTS.labels(SOURCE, "bad_json").inc()
            raise _Reject(400, f"body is not valid JSON: {exc}") from None
        try:
            return audit.batch_items(doc)
        except audit.BadDocument as exc:
            metrics.INVALID_EVENTS.labels(SOURCE, "bad_shape").inc()
            raise _Reject(400, f"not an audit EventList, Event or array: {exc}") from None

    async def _store(self, frictions: list[Friction]) -> None:
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self.executor, self.outbox.store, frictions)
        except OutboxError as exc:
            log.error("webhook batch not stored, answering 503 so the apiserver retries: %s",
                      exc)
            raise _Reject(503, "outbox unavailable, retry later",
                          [(b"retry-after", RETRY_AFTER)]) from None
        if result.duplicates:
            metrics.DUPLICATES.labels(SOURCE).inc(result.duplicates)


def make_webhook_app(**kwargs: Any) -> WebhookApp:
    """Build the webhook ASGI app (keyword arguments of `WebhookApp`)."""
    return WebhookApp(**kwargs)
