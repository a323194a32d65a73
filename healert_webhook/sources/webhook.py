"""The apiserver's audit webhook: a raw ASGI app (no framework on the hot path).

Per request: route on the path (the query, `?timeout=30s`, is ignored), authenticate
(client certificate names, bearer token), check method, content type and size, receive
the body under the limit and the memory budget, read it (sources/body.py: how, at what
memory cost, which events are candidates), evaluate it in the pipeline, store what it
yields on a worker thread, and answer `200 {}` only once the outbox transaction that
holds the batch's friction events has committed.

A store failure answers 503 with `Retry-After`: the transaction stored nothing, so the
apiserver's retry is safe. Bad items inside a good batch are counted by the pipeline and
never fail the batch. Parsing and detection run off the event loop, so no body, however
large or oddly shaped, keeps the loop from answering other requests and probes.

The apiserver's requests skip the ASGI cycle (`begin`, protocol.py's fast path): a POST to
the path with a Content-Length, JSON, authenticated and within the limit is served by
`FastRequest.serve`, which reserves the body's size under the same deadline and budget
wait as `__call__`, then has the protocol read the body into one buffer (a bytearray,
handed on as it is). Whatever `begin` declines comes through `__call__`, which answers
every refusal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from time import perf_counter
from typing import Any, cast

import orjson

from healert_webhook import batches, metrics
from healert_webhook.auth import (
    TokenAuth,
    allow_list,
    mark_authenticated,
    names_allowed,
    request_names,
)
from healert_webhook.budget import BodyBudget
from healert_webhook.config import Settings, env
from healert_webhook.logs import Limiter
from healert_webhook.pipeline import Pipeline
from healert_webhook.prefilter import NeedsMore
from healert_webhook.protocol import Answer, FastBody, answered
from healert_webhook.records import Evaluation, OutboxError, OutboxFull, StoreResult
from healert_webhook.sources import body as body_reading

log = logging.getLogger(__name__)
_full_log = Limiter(log, per_interval=1, interval=60.0, what="batches refused (outbox full)")
_refused_log = Limiter(log, per_interval=5, interval=60.0, what="webhook requests refused")

RETRY_AFTER = b"5"
SOURCE = "webhook"
# Bodies up to this size are evaluated on the event loop: simdjson reads them whole in a
# few milliseconds.
ON_LOOP_BYTES = body_reading.ON_LOOP_BYTES
# ...if they hold at most this many events. A body costs what its candidates cost (~26 us
# each, parsed and detected, against ~1 us for an event ruled out), which only evaluating
# it tells; its events bound them, and the evaluation counts them right after simdjson's
# read, before it evaluates any (`most`): 1,000 of the smallest events that can match
# take ~30 ms. An apiserver batch holds 400 (--audit-webhook-batch-max-size). A body of
# more is evaluated again on a worker thread, which gives the GIL back to the loop every
# few milliseconds.
ON_LOOP_EVENTS = 1000

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass
class Request:
    """The headers the webhook looks at, gathered in one pass."""

    content_type: bytes = b""
    content_length: bytes | None = None
    authorization: bytes | None = None
    transfer_encoding: bytes | None = None


def _gather(headers: Sequence[tuple[bytes, bytes]]) -> Request:
    req = Request()
    for name, value in headers:
        if name == b"content-type":
            req.content_type = value
        elif name == b"content-length":
            req.content_length = value
        elif name == b"authorization":
            req.authorization = value
        elif name == b"transfer-encoding":
            req.transfer_encoding = value
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


class _Crowded(Exception):
    """A body holds more events than are evaluated on the event loop."""


class _Disconnected(Exception):
    """The client went away while sending the body."""


class WebhookApp:
    """The ASGI app for the apiserver's audit webhook (see the module docstring)."""

    def __init__(self, settings: Settings, pipeline: Pipeline, executor: Executor, *,
                 tokens: TokenAuth | None = None, budget: BodyBudget | None = None) -> None:
        self.pipeline = pipeline
        self.executor = executor
        self.path = settings.webhook_path
        self.max_body_bytes = settings.max_body_bytes
        self.tokens = tokens
        self.client_names = allow_list(settings.tls_client_names)
        self.budget = budget or BodyBudget(settings.max_inflight_bytes)
        self.max_items = settings.max_batch_items
        self.body_timeout = settings.webhook_body_timeout
        self._codes: dict[int, Any] = {}
        self._loop_turn = asyncio.Lock()  # a body being evaluated on the event loop

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one HTTP request (lifespan and websockets are off in the server)."""
        if scope["type"] != "http":
            return
        start = perf_counter()
        answer = await self._answer(scope, self._serve(scope, receive))
        if answer is None:
            self._count(self._unanswered(scope), start)
            return
        code, body, headers = answer
        await send({"type": "http.response.start", "status": code,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", b"%d" % len(body)), *headers]})
        await send({"type": "http.response.body", "body": body})
        self._count(code, start)

    async def _answer(self, scope: Scope, work: Awaitable[None]
                      ) -> tuple[int, bytes, list[tuple[bytes, bytes]]] | None:
        """The answer to a request once `work` has served it: 200, or the refusal it
        raised; None when the client went away while sending the body."""
        try:
            await work
        except _Reject as rej:
            return self._refusal(scope, rej)
        except _Disconnected:
            return None
        except Exception:  # a bug must still be answered, counted and logged
            log.exception("webhook request failed")
            return 500, _error("internal error"), [(b"connection", b"close")]
        return 200, b"{}", []

    @staticmethod
    def _unanswered(scope: Scope) -> int:
        """What a request the app could not answer counts as: the answer the protocol
        gave it (its body was no HTTP), else 499 (the client went away)."""
        return answered(scope) or 499

    def _refusal(self, scope: Scope, rej: _Reject) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        self._log_reject(scope, rej)
        headers = rej.headers
        if rej.close:  # the body was not read: do not parse the rest as a request
            headers = [*headers, (b"connection", b"close")]
        return rej.code, _error(rej.message), headers

    # -- the fast path (protocol.py) ------------------------------------------------------

    @property
    def fast_receiver(self) -> WebhookApp:
        """The protocol's fast path is this app's (`begin`)."""
        return self

    @property
    def raw_path(self) -> bytes:
        """The one path the fast path takes, as it comes in a request line."""
        return self.path.encode("ascii", "replace")

    def begin(self, scope: dict[str, Any]) -> FastRequest | None:
        """Take a POST to the path with a Content-Length within the limit, JSON and
        authenticated (the protocol then hands its body over in one buffer); None for
        anything else, which `__call__` answers, counts and logs."""
        if scope["path"] != self.path:
            return None
        req = _gather(scope["headers"])
        if req.content_length is None or req.transfer_encoding is not None \
                or not is_json(req.content_type) or self._auth_refusal(scope, req) is not None:
            return None
        try:
            size = self._check_length(req.content_length)
        except _Reject:
            return None
        if size is None:
            return None
        mark_authenticated(scope)
        return FastRequest(self, scope, size)

    async def _serve_fast(self, source: FastBody, declared: int) -> None:
        """What `_serve` does once the request is admitted, its body read from `source`."""
        share = body_reading.Reservation(self.budget)
        try:
            try:
                async with asyncio.timeout(self.body_timeout):
                    await self._take(share, declared)
                    body = await source.read()
            except TimeoutError:
                raise _Reject(408, f"body not received within {self.body_timeout:g} s",
                              close=True) from None
            if body is None:
                raise _Disconnected
        except BaseException:
            await share.release()
            raise
        # The buffer goes on as it is: reading a body only reads it (no copy to bytes).
        await self._finish(cast(bytes, body), share)

    async def _finish(self, body: bytes, share: body_reading.Reservation) -> None:
        """What a request's whole body goes through; gives back the reservation."""
        try:
            await self._after_body(body, share)
        finally:
            await share.release()

    def _count(self, code: int, start: float) -> None:
        child = self._codes.get(code)
        if child is None:
            child = self._codes[code] = metrics.WEBHOOK_REQUESTS.labels(str(code))
        child.inc()
        metrics.WEBHOOK_DURATION.observe(perf_counter() - start)

    @staticmethod
    def _log_reject(scope: Scope, rej: _Reject) -> None:
        client = scope.get("client")
        who = f"{client[0]}:{client[1]}" if client else "unknown peer"
        _refused_log.warning("webhook request from %s refused with %d: %s", who, rej.code,
                             rej.message, key=str(rej.code))

    async def _serve(self, scope: Scope, receive: Receive) -> None:
        if scope["path"] != self.path:
            raise _Reject(404, "not found", close=True)
        req = _gather(scope["headers"])
        self._authenticate(scope, req)
        mark_authenticated(scope)
        if scope["method"] != "POST":
            raise _Reject(405, "only POST is accepted", [(b"allow", b"POST")], close=True)
        if not is_json(req.content_type):
            raise _Reject(415, "Content-Type must be application/json", close=True)
        declared = self._check_length(req.content_length)
        share = body_reading.Reservation(self.budget)
        try:
            body = await self._receive_body(receive, declared, share)
        except BaseException:
            await share.release()
            raise
        await self._finish(body, share)

    async def _after_body(self, body: bytes, share: body_reading.Reservation) -> None:
        """Read, evaluate and store a whole body, growing its share as reading it needs."""
        received = time.time()
        metrics.WEBHOOK_BODY_BYTES.observe(len(body))
        plan, cost = await body_reading.measure(batches.plan, body, self.executor)
        await self._grow(share, cost)
        await self._ingest(body, plan, share, received)

    async def _grow(self, share: body_reading.Reservation, cost: int) -> None:
        """Hold `cost` bytes in all, or refuse the batch before parsing."""
        try:
            await share.grow_to(cost)
        except body_reading.TooCostly as exc:
            raise _Reject(413, f"parsing this body would take about {exc.cost >> 20} MiB "
                          f"of memory, more than {env('max_inflight_bytes')} allows "
                          f"({exc.limit >> 20} MiB)") from None
        except body_reading.Busy:
            raise self._busy() from None

    @staticmethod
    def _busy() -> _Reject:
        metrics.WEBHOOK_BUSY.inc()
        return _Reject(503, "too many request bodies in memory, retry later",
                       [(b"retry-after", b"1")], close=True)

    def _authenticate(self, scope: Scope, req: Request) -> None:
        refusal = self._auth_refusal(scope, req)
        if refusal is not None:
            reason, rej = refusal
            metrics.WEBHOOK_AUTH_FAILURES.labels(reason).inc()
            raise rej

    def _auth_refusal(self, scope: Scope, req: Request) -> tuple[str, _Reject] | None:
        """Why the request is not authenticated (a metric's label, the answer), or None."""
        if self.client_names:
            names = request_names(scope)
            if not names_allowed(names, self.client_names):
                shown = ", ".join(names) or "no client certificate"
                return "client_name", _Reject(
                    403, f"client certificate name not allowed: {shown}", close=True)
        if self.tokens is not None:
            reason = self.tokens.check(req.authorization)
            if reason is not None:
                return reason, _Reject(401, f"unauthorized: {reason.replace('_', ' ')}",
                                       [(b"www-authenticate", b"Bearer")], close=True)
        return None

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
                            share: body_reading.Reservation) -> bytes:
        """Reserve the budget and read the body, all within `body_timeout` (else 408)."""
        try:
            async with asyncio.timeout(self.body_timeout):
                if declared is not None:
                    await self._take(share, declared)
                return await self._read(receive, share)
        except TimeoutError:
            raise _Reject(408, f"body not received within {self.body_timeout:g} s",
                          close=True) from None

    async def _take(self, share: body_reading.Reservation, size: int) -> None:
        try:
            await share.take(size)
        except body_reading.Busy:
            raise self._busy() from None

    async def _read(self, receive: Receive, share: body_reading.Reservation) -> bytes:
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
                if total > share.held:
                    await self._take(share, total - share.held)
                chunks.append(chunk)
            more = message.get("more_body", False)
        # One join at the end: appending to one growing bytes object would copy quadratically.
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _ingest(self, body: bytes, plan: batches.Reading | None,
                      share: body_reading.Reservation, received: float) -> StoreResult:
        """Evaluate the body and store what it yields; map failures to answers.

        An apiserver EventList (a few MiB at most, 400 events) is evaluated right here:
        most of its events are ruled out from simdjson's reading, which takes a few
        milliseconds, and the loop goes on reading the other connections' bodies in large
        pieces instead of handing the GIL back and forth with a thread; one body at a
        time, the loop's sockets polled in between. Bodies of more events or bytes, and
        any body that must be parsed whole, are evaluated on a worker thread, so the loop
        keeps answering meanwhile (no body holds it past ~100 ms). Stores always run
        there: they wait for the disk; a resent batch, whose friction events the outbox
        committed lately, is answered here from its memory (outbox/recent.py).
        """
        loop = asyncio.get_running_loop()
        try:
            found = await self._evaluate(body, plan, share, received) \
                if plan is not None else None
            if found is None:  # the careful way: one orjson parse of the whole body
                if plan is not None:  # simdjson refused it: what was held was for simdjson
                    await self._grow(share, await body_reading.measure(
                        batches.estimate, body, self.executor))
                return await loop.run_in_executor(self.executor, self._process, body)
            metrics.WEBHOOK_PARSES.labels("items").inc()
            if not found.frictions:
                return self._store(found)  # nothing to write: no thread hop
            resent = self.pipeline.resent(found.frictions, SOURCE)
            if resent is not None:
                return resent  # all stored before: nothing to write, no thread hop
            return await loop.run_in_executor(self.executor, self._store, found)
        except batches.TooManyItems as exc:
            raise _Reject(413, f"batch of {exc.count} events is over "
                          f"{env('max_batch_items')}={self.max_items}") from None
        except body_reading.BadBody as exc:
            metrics.INVALID_EVENTS.labels(SOURCE, exc.reason).inc()
            raise _Reject(400, str(exc)) from None
        except _Reject:
            raise
        except OutboxFull as exc:
            _full_log.warning("webhook batch refused, answering 503 so the apiserver keeps "
                              "it and retries: %s", exc)
            raise _Reject(503, "outbox full, retry later",
                          [(b"retry-after", RETRY_AFTER)]) from None
        except OutboxError as exc:
            log.error("webhook batch not stored, answering 503 so the apiserver retries: %s",
                      exc)
            raise _Reject(503, "outbox unavailable, retry later",
                          [(b"retry-after", RETRY_AFTER)]) from None

    async def _evaluate(self, body: bytes, plan: batches.Reading,
                        share: body_reading.Reservation,
                        received: float) -> Evaluation | None:
        """simdjson's reading of the body (None: parse it whole). A candidate too large
        for what was reserved gets its share, and the body is read again."""
        allowance = first = batches.candidate_reserve(plan)
        while True:
            try:
                if allowance == first and len(body) <= ON_LOOP_BYTES and plan.groups is None:
                    with contextlib.suppress(_Crowded):
                        return await self._evaluate_on_loop(body, plan, allowance, received)
                return await asyncio.get_running_loop().run_in_executor(
                    self.executor, self._evaluate_body, body, plan, self.max_items,
                    allowance, received)
            except NeedsMore as more:
                await self._grow(share, share.held + more.size)
                allowance += more.size

    def _evaluate_body(self, body: bytes, plan: batches.Reading, most: int,
                       allowance: int, received: float) -> Evaluation | None:
        return body_reading.evaluate(self.pipeline, body, plan, SOURCE, most,
                                     allowance=allowance, received=received)

    async def _evaluate_on_loop(self, body: bytes, plan: batches.Reading,
                                allowance: int, received: float) -> Evaluation | None:
        """The evaluation on the event loop, if the body (read whole) holds at most
        ON_LOOP_EVENTS events: else _Crowded, found before any was evaluated, or
        TooManyItems past the batch limit.

        One body per turn of the loop: the turn is handed on from the next iteration,
        after the loop has polled its sockets, so bodies that arrive together are not
        evaluated one after another while a probe waits."""
        await self._loop_turn.acquire()
        try:
            return self._evaluate_body(body, plan, min(self.max_items, ON_LOOP_EVENTS),
                                       allowance, received)
        except batches.TooManyItems as exc:
            if exc.count > self.max_items:
                raise
            raise _Crowded from None
        finally:
            asyncio.get_running_loop().call_soon(self._loop_turn.release)

    def _store(self, found: Evaluation) -> StoreResult:
        return self.pipeline.store(found.frictions, SOURCE)

    def _process(self, body: bytes) -> StoreResult:
        """Parse the whole body, detect and store (blocking: runs on a worker thread)."""
        metrics.WEBHOOK_PARSES.labels("whole").inc()
        items = body_reading.parse_body(body)
        if len(items) > self.max_items:
            raise batches.TooManyItems(len(items))
        return self.pipeline.process(items, SOURCE)[1]


class FastRequest:
    """A request taken on the fast path (`WebhookApp.begin`)."""

    def __init__(self, app: WebhookApp, scope: Scope, size: int) -> None:
        self.app = app
        self.scope = scope
        self.size = size
        self.start = perf_counter()

    async def serve(self, body: FastBody) -> Answer | None:
        """Serve it as `__call__` does from the reservation on; the answer, counted."""
        app = self.app
        answer = await app._answer(self.scope, app._serve_fast(body, self.size))
        app._count(app._unanswered(self.scope) if answer is None else answer[0], self.start)
        return answer
