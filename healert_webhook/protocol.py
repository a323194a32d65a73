"""The HTTP protocol both listeners run: uvicorn's httptools protocol plus the bounds it lacks.

uvicorn buffers request lines and headers without bound, arms its idle timer only after a
first response, and has no deadline for headers. `GuardedHttpProtocol` bounds a request
head's size and time, gives a new connection a short deadline for its first request head,
and tells the connection gate (connections.py) when the connection turns protected: on
the webhook once a request on it has passed authentication (the app says so through the
request's scope, `AUTHENTICATED_EXTENSION`), on the ops listener (`OpsHttpProtocol`) only
while a request is being answered. `PeerInfoProtocol` also puts the verified TLS client
certificate's names into every request's scope.

A body is handed to the app as the parser delivered it (`_Cycle`): uvicorn appends every
piece to one growing bytearray and copies that into bytes on every receive, two copies of
every body more than needed, which at the webhook's megabytes a batch are a tenth of its
CPU. Flow control is uvicorn's: reading pauses while more than its high-water mark waits.

The webhook's own requests take a shorter way (`FastReceiver`): a `POST` to its path with
a Content-Length that the app accepts at once (authenticated, within the limits) skips the
ASGI cycle. Reading pauses at the head's end until the app holds the body's size in the
memory budget; then the event loop reads the rest of the body straight into one buffer of
that size (`_Reader`), under the app's body deadline, the app evaluates it, and the answer
is written as prepared bytes. Anything else, and any request the app would refuse, goes
the ordinary way, which gives every refusal its answer, counter and log line.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import Callable, Sequence, Sized
from typing import Any, Protocol, cast

import httptools
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT, FlowControl
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from healert_webhook import metrics
from healert_webhook.logs import Limiter
from healert_webhook.tls import peer_names

log = logging.getLogger(__name__)
_refused_log = Limiter(log, per_interval=5, interval=60.0, what="request heads refused")
PEER_EXTENSION = "healert.peer"
# In the scope of a request on a connection not yet proven, `{"call": ...}`: call it once
# the request has passed authentication, and the connection is never closed for room.
AUTHENTICATED_EXTENSION = "healert.authenticated"
# In the scope of a request the protocol answered itself while its body came (bytes that
# are no HTTP), `{"status": code}`: the app, which learns only that the connection ended,
# counts that answer.
ANSWERED_EXTENSION = "healert.answered"
# An answer: status code, JSON body, extra headers.
Answer = tuple[int, bytes, Sequence[tuple[bytes, bytes]]]


class FastBody(Protocol):
    """The body of a request on the fast path, as the protocol receives it."""

    async def read(self) -> bytearray | None:
        """The whole body, in one buffer of the declared size; None if the client went
        away first. Call once the memory budget holds the size: no buffer exists before."""


class FastRequest(Protocol):
    """A request the app took on the fast path (`FastReceiver.begin`)."""

    size: int  # the declared Content-Length

    async def serve(self, body: FastBody) -> Answer | None:
        """Reserve, receive the body, evaluate and store it; the answer (counted and
        logged by the app), or None when the client went away before its body was whole."""


class FastReceiver(Protocol):
    """An app that takes some of its requests without the ASGI cycle (sources/webhook.py).

    Found as the `fast_receiver` attribute of the served app or of an app it wraps.
    """

    @property
    def raw_path(self) -> bytes:
        """The one path taken, as it comes in a request line."""

    def begin(self, scope: dict[str, Any]) -> FastRequest | None:
        """Take the request whose head is `scope` (a POST to `raw_path`), or None to let
        the ASGI app answer it. Runs in the parser's callback: it must not block."""


def answered(scope: Any) -> int | None:
    """The status the protocol answered the request of `scope` with itself, or None."""
    given = scope.get("extensions", {}).get(ANSWERED_EXTENSION)
    return None if given is None else int(given["status"])


def fast_receiver(app: object) -> FastReceiver | None:
    """The fast path `app` offers, looking through the middleware uvicorn wraps it in."""
    for _ in range(4):
        fast = getattr(app, "fast_receiver", None)
        if fast is not None:
            return cast(FastReceiver, fast)
        app = getattr(app, "app", None)
    return None


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus the limits it lacks on a request's head.

    uvicorn (0.3x) buffers request lines and headers without bound, arms its idle timer
    only after a first response, and has no deadline for headers: one client could hold
    gigabytes in one endless header, or thousands of connections that never send a
    request. Here a head (request line and headers) over `max_head_bytes` is answered 431;
    a new connection's first head must be complete within `first_head_timeout` seconds of
    the connection (the apiserver sends it at once), a later one within `head_timeout`
    seconds of its first byte, else 408 (a connection that sent nothing is closed
    quietly). Headers from the apiserver are a few hundred bytes.
    """

    max_head_bytes = 64 * 1024
    first_head_timeout = 10.0
    head_timeout = 30.0
    keep_alive: float | None = None  # idle seconds between requests (None: uvicorn's)
    counted = True  # refusals count in healert_webhook_requests_total (False: ops listener)
    on_close: Callable[[], None] | None = None  # the gate's count of open connections
    on_protect: Callable[[], object] | None = None  # the gate: never close it for room
    on_evictable: Callable[[], object] | None = None  # the gate: may close it for room
    proven = False  # a request on it passed authentication
    offers_authentication = True  # the app is offered AUTHENTICATED_EXTENSION
    fast: FastReceiver | None = None  # the app's fast path, if it has one
    direct: memoryview | None = None  # where the transport reads a fast body's rest into
    _direct: _FastCycle | None = None
    _serving: RequestResponseCycle | None = None  # the request being answered
    _head_bytes = 0
    _in_head = True
    _head_timer: asyncio.TimerHandle | None = None
    _head_limit = ""  # what the head timer enforces, for the 408's message
    _deferred: bytes | None = None  # a bad head's answer, once those ahead are written

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.fast is None:
            self.fast = fast_receiver(self.app)

    def for_transport(self) -> asyncio.BaseProtocol:
        """What the transport should call: this protocol, or with a fast path, a reader in
        front of it that can put a body straight into its buffer (`_Reader`)."""
        return self if self.fast is None else _Reader(self)

    def connection_made(self, transport: Any) -> None:
        """Start the first head's deadline at once: a connection must show a request."""
        super().connection_made(transport)
        self.flow = _Flow(transport, self.pipeline)
        if self.keep_alive is not None:
            self.timeout_keep_alive = self.keep_alive  # type: ignore[assignment]
        self._start_head_timer(self.first_head_timeout, "of connecting")

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop the head timer with the connection; tell the request being answered and
        the gate."""
        self._stop_head_timer()
        if self.transport is not None:  # else a TLS handshake failed: it never began
            super().connection_lost(exc)
            # uvicorn tells only the newest request; with pipelining, an older one is
            # being answered, and must not write to the closed transport.
            serving = self._serving
            if serving is not None and serving is not self.cycle \
                    and not serving.response_complete:
                serving.disconnected = True
                serving.message_event.set()
        if self.on_close is not None:
            self.on_close()
            self.on_close = None

    def data_received(self, data: bytes) -> None:
        """Feed the parser, counting head bytes; refuse a head over the limit."""
        if self._deferred is not None:  # a head was refused: nothing after it is read
            return
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > self.max_head_bytes:
            self._refuse(431, f"request head over {self.max_head_bytes} bytes")

    def on_message_begin(self) -> None:
        """A request starts: its head must be complete within `head_timeout`."""
        super().on_message_begin()
        if self.offers_authentication and not self.proven:
            self.scope["extensions"] = {AUTHENTICATED_EXTENSION: {"call": self.authenticated}}
        if self._head_timer is None:
            self._start_head_timer(self.head_timeout, "of its first byte")

    def authenticated(self) -> None:
        """A request on this connection passed authentication: it is proven for good."""
        if not self.proven:
            self.proven = True
            if self.on_protect is not None:
                self.on_protect()

    def on_headers_complete(self) -> None:
        """The head is complete: the body is the app's business (it has its own deadline)."""
        self._in_head = False
        self._stop_head_timer()
        if self.fast is not None and self._take_fast(self.fast):
            return
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.__class__ is RequestResponseCycle:  # a new request
            _Cycle.adopt(cycle)

    def on_body(self, body: bytes) -> None:
        """Keep the piece as it came; pause reading past the high-water mark."""
        cycle = self.cycle
        if isinstance(cast(object, cycle), _FastCycle):
            cast(_FastCycle, cycle).add(body)
            return
        if not isinstance(cycle, _Cycle):  # an upgrade: uvicorn's own handling
            super().on_body(body)
            return
        if (self.parser.should_upgrade() and self._should_upgrade()) or cycle.response_complete:
            return
        cycle.pieces.append(body)
        cycle.waiting += len(body)
        if cycle.waiting > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.message_event.set()

    def on_message_complete(self) -> None:
        """The next bytes on this connection start a new head."""
        cycle = self.cycle
        if isinstance(cast(object, cycle), _FastCycle):
            cast(_FastCycle, cycle).complete()
        else:
            super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0

    # -- the fast path --------------------------------------------------------------------

    def _take_fast(self, fast: FastReceiver) -> bool:
        """Serve this request on the fast path if it and the app allow; False otherwise,
        before anything of the connection's state changed."""
        parser = self.parser
        if parser.get_method() != b"POST" or self.expect_100_continue \
                or parser.should_upgrade():
            return False
        raw_path = httptools.parse_url(self.url).path
        if raw_path != fast.raw_path:
            return False
        http_version = parser.get_http_version()
        scope = self.scope
        scope["method"] = "POST"
        if http_version != "1.1":
            scope["http_version"] = http_version
        scope["path"] = self.root_path + raw_path.decode("ascii")
        scope["raw_path"] = self.root_path.encode("ascii") + raw_path
        scope["query_string"] = b""  # the webhook ignores its query
        request = fast.begin(cast(dict[str, Any], scope))
        if request is None:
            return False
        keep_alive = http_version != "1.0" and parser.should_keep_alive()
        cycle = _FastCycle(request, keep_alive, self)
        existing, self.cycle = self.cycle, cycle  # type: ignore[assignment]
        # Nothing more is read until the app holds the body's size and gives its buffer:
        # the body then goes straight there, not through the parser's copies.
        self.flow.pause_reading()
        if existing is None or existing.response_complete:
            self._start_asgi_task(cycle, self.app)  # type: ignore[arg-type]
        else:  # pipelined behind one being answered: it waits in uvicorn's queue
            self.pipeline.appendleft((cycle, self.app))  # type: ignore[arg-type]
        return True

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        """Serve a request now: the fast path's own way, or uvicorn's."""
        self._serving = cycle
        if not isinstance(cast(object, cycle), _FastCycle):
            super()._start_asgi_task(cycle, app)
            return
        task = self.loop.create_task(self._fast_serve(cast(_FastCycle, cycle)))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    async def _fast_serve(self, cycle: _FastCycle) -> None:
        answer = await cycle.request.serve(cycle)
        cycle.drop()
        if answer is None:  # the client went away
            cycle.response_complete = True
            return
        if self.flow.write_paused and not cycle.disconnected:
            await self.flow.drain()  # the peer reads its answers before it gets more
        self._fast_respond(cycle, *answer)

    def _fast_respond(self, cycle: _FastCycle, code: int, payload: bytes,
                      headers: Sequence[tuple[bytes, bytes]]) -> None:
        """Write the answer as uvicorn would, close if it must, start what waits."""
        cycle.response_complete = True
        if cycle.disconnected:
            return
        keep_alive = cycle.keep_alive
        if headers:
            keep_alive = keep_alive and (b"connection", b"close") not in headers
        defaults = self.server_state.default_headers
        if code == 200 and not headers and payload == b"{}":
            answer = _ANSWERS.get(keep_alive)
            if answer is None or answer[0] is not defaults:
                answer = _ANSWERS[keep_alive] = (defaults, _response(
                    code, payload, headers, defaults, keep_alive))
            self.transport.write(answer[1])
        else:
            self.transport.write(_response(code, payload, headers, defaults, keep_alive))
        if not keep_alive:
            self.transport.close()
        self.on_response_complete()

    def read_direct(self, cycle: _FastCycle, rest: memoryview) -> None:
        """The transport reads the rest of the body into `rest`, past the parser."""
        self.direct = rest
        self._direct = cycle

    def direct_updated(self, nbytes: int) -> None:
        """`nbytes` more of the body came into place; at its end the parser, which has not
        seen them, is replaced by a new one for the next request."""
        cycle = self._direct
        assert cycle is not None and self.direct is not None
        cycle.got += nbytes
        if cycle.got < cycle.request.size:
            self.direct = self.direct[nbytes:]
            return
        self.direct = self._direct = None
        parser = httptools.HttpRequestParser(self)
        parser.set_dangerous_leniencies(lenient_data_after_close=True)  # as uvicorn's own
        self.parser = parser
        self.on_message_complete()

    def _start_head_timer(self, seconds: float, counted_from: str) -> None:
        self._head_limit = f"within {seconds:g} s {counted_from}"
        self._head_timer = self.loop.call_later(seconds, self._head_expired)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if not self._in_head or self.transport.is_closing():
            return
        if self._head_bytes == 0:  # nothing sent: nothing to answer
            self.transport.close()
            return
        self._refuse(408, f"request head not complete {self._head_limit}")

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes that are no HTTP request, counted and logged like
        every refusal, after the answers to the requests ahead. A request whose body is
        in flight is counted by the app instead, as the answer its scope records (the app
        learns only of the end of its connection), so it is not counted twice."""
        cycle = self.cycle
        if self._in_head or cycle is None or cycle.response_complete:
            self._refuse(400, msg.rstrip("."))
            return
        self._log_refusal(400, msg.rstrip("."), count=False)
        self.scope.setdefault("extensions", {})[ANSWERED_EXTENSION] = {"status": 400}
        super().send_400_response(msg)

    def on_response_complete(self) -> None:
        """An answer was written: a refused head's answer goes once it is the next."""
        super().on_response_complete()
        deferred = self._deferred
        if deferred is not None and self.cycle.response_complete \
                and not self.transport.is_closing():
            self._deferred = None
            self.transport.write(deferred)
            self.transport.close()

    def _log_refusal(self, code: int, why: str, count: bool = True) -> None:
        who = f"{self.client[0]}:{self.client[1]}" if self.client else "unknown peer"
        _refused_log.warning("connection from %s refused with %d: %s", who, code, why,
                             key=str(code))
        if self.counted and count:
            metrics.WEBHOOK_REQUESTS.labels(str(code)).inc()

    def _refuse(self, code: int, why: str) -> None:
        """Answer a bad head `code` and close; after the answers to the requests ahead of
        it (pipelined), which a client would otherwise take this answer for."""
        if self.transport.is_closing() or self._deferred is not None:
            return
        self._stop_head_timer()
        body = b'{"error":"%s"}' % why.encode("ascii")
        answer = (STATUS_LINE[code] + b"content-type: application/json\r\n"
                  b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
        self._log_refusal(code, why)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            self._deferred = answer
            self.flow.pause_reading()
            return
        self.transport.write(answer)
        self.transport.close()


# The answer `200 {}` as written, with and without keep-alive, and the default headers it
# holds: uvicorn renews those (the date) every second.
_ANSWERS: dict[bool, tuple[object, bytes]] = {}


def _response(code: int, payload: bytes, headers: Sequence[tuple[bytes, bytes]],
              defaults: Sequence[tuple[bytes, bytes]], keep_alive: bool) -> bytes:
    parts = [STATUS_LINE[code]]
    for name, value in (*defaults, (b"content-type", b"application/json"),
                        (b"content-length", b"%d" % len(payload)), *headers):
        parts += (name, b": ", value, b"\r\n")
    if not keep_alive and (b"connection", b"close") not in headers:
        parts.append(b"connection: close\r\n")
    parts += (b"\r\n", payload)
    return b"".join(parts)


class _FastCycle:
    """A request on the fast path: its body as it arrives, the state of its answer.

    Stands where uvicorn keeps its cycle, with what uvicorn's protocol reads and sets
    there (pipelining, shutdown, the connection's end). Until the app holds the body's
    size in the memory budget, the pieces the parser delivers (the rest of what was read
    with the head) wait as they are; then they are copied into the body's buffer and the
    event loop reads the rest straight into it.
    """

    def __init__(self, request: FastRequest, keep_alive: bool,
                 http: GuardedHttpProtocol) -> None:
        self.request = request
        self.http = http
        self.keep_alive = keep_alive
        self.flow = http.flow
        self.buffer: bytearray | None = None  # once the app reads
        self.got = 0
        self.early: list[bytes] = []  # pieces before the buffer
        self.whole = False
        self.waiter: asyncio.Future[None] | None = None  # done: whole, or never will be
        self.response_complete = False
        self.disconnected = False

    @property
    def message_event(self) -> _FastCycle:
        """What uvicorn's protocol sets when the connection ends (`set`)."""
        return self

    def set(self) -> None:
        """The connection ended: a read still waiting learns the body will not come."""
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def add(self, piece: bytes) -> None:
        """Keep a piece of the body (the parser delivers no more than declared)."""
        if self.response_complete:  # refused before the body was whole
            return
        buffer = self.buffer
        if buffer is None:
            self.early.append(piece)
            self.got += len(piece)
            if self.got > HIGH_WATER_LIMIT:
                self.flow.pause_reading()
            return
        end = self.got + len(piece)
        buffer[self.got:end] = piece
        self.got = end

    def complete(self) -> None:
        """The last piece came."""
        self.whole = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read(self) -> bytearray | None:
        """The whole body in one buffer of the declared size (see FastBody)."""
        if self.disconnected:
            return None
        buffer = self.buffer = _spare_buffer(self.request.size)
        at = 0
        for piece in self.early:
            buffer[at:at + len(piece)] = piece
            at += len(piece)
        self.early = []
        if self.whole:
            return buffer
        self.http.read_direct(self, memoryview(buffer)[at:])
        self.flow.resume_reading()
        self.waiter = asyncio.get_running_loop().create_future()
        await self.waiter
        return buffer if self.whole else None

    def drop(self) -> None:
        """The app is done with the body: its buffer serves another if nothing holds it."""
        buffer, self.buffer = self.buffer, None
        self.early = []
        self.waiter = None
        # Referenced only here and by the call's argument: no view of it, no one's copy.
        if buffer is not None and sys.getrefcount(buffer) == 2 \
                and len(buffer) <= SPARE_BYTES:
            spares = _per_thread.spares
            if len(spares) < SPARE_BUFFERS:
                spares.append(buffer)


# A body's buffer comes from the spares when one is there: a new one of hundreds of KiB is
# new memory from the kernel each time (the allocator maps and unmaps it), whose page
# faults cost more than the copy of the body. The spares are few and small, and their
# bytes are out of the budget only between requests.
SPARE_BUFFERS = 2
SPARE_BYTES = 4 * 1024 * 1024
_FILL = bytes(SPARE_BYTES)  # what a spare grows by before the body overwrites it


class _PerThread(threading.local):
    """An event loop's buffers: uvloop reads into a buffer with the GIL released, so two
    loops (threads) never share one."""

    def __init__(self) -> None:
        # Where heads and bodies not read directly land, handed to the parser as soon as
        # they are read, before anything else runs on the loop: one serves every connection.
        self.scratch = memoryview(bytearray(64 * 1024))
        self.spares: list[bytearray] = []


_per_thread = _PerThread()


def _spare_buffer(size: int) -> bytearray:
    """A buffer of `size` bytes (their content is whatever it held)."""
    spares = _per_thread.spares
    if not spares or size > SPARE_BYTES:
        return bytearray(size)
    buffer = spares.pop()
    have = len(buffer)
    if have > size:
        del buffer[size:]  # keeps its memory unless it shrinks below half
    elif have < size:
        buffer += memoryview(_FILL)[:size - have]
    return buffer


class _Reader(asyncio.BufferedProtocol):
    """The transport's protocol in front of a guarded HTTP protocol with a fast path.

    The event loop reads into the buffer it is given: a fast body's own once the app
    reads it (the protocol's `direct`), else a shared scratch buffer whose bytes go to the
    parser as they would have come to `data_received`. The loop's TLS layer decrypts into
    the same buffers. A body so takes no copy beyond the kernel's (or the decryption).
    """

    __slots__ = ("http",)

    def __init__(self, http: GuardedHttpProtocol) -> None:
        self.http = http

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Hand the connection to the HTTP protocol."""
        self.http.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        """Tell the HTTP protocol."""
        self.http.connection_lost(exc)

    def pause_writing(self) -> None:
        """Tell the HTTP protocol."""
        self.http.pause_writing()

    def resume_writing(self) -> None:
        """Tell the HTTP protocol."""
        self.http.resume_writing()

    def eof_received(self) -> None:
        """Tell the HTTP protocol (which closes the connection)."""
        self.http.eof_received()

    def get_buffer(self, sizehint: int) -> memoryview:
        """The rest of a fast body, or the scratch buffer."""
        direct = self.http.direct
        return _per_thread.scratch if direct is None else direct

    def buffer_updated(self, nbytes: int) -> None:
        """Account for what was read into the body, or parse what came into scratch."""
        http = self.http
        if http.direct is not None:
            http.direct_updated(nbytes)
        else:
            http.data_received(_per_thread.scratch[:nbytes])  # type: ignore[arg-type]


class _Flow(FlowControl):
    """uvicorn's flow control, except that reading stays paused while parsed requests
    wait in the pipeline.

    uvicorn resumes reading after every answer, and the parser queues every request of
    the next read: a client pipelining faster than it is answered queued without bound.
    A request that waits there has its body whole (a later head was parsed after it), so
    only the newest one may still need reading, and by the time it runs the queue is empty.
    """

    def __init__(self, transport: asyncio.Transport, pipeline: Sized) -> None:
        super().__init__(transport)
        self._pipeline = pipeline

    def resume_reading(self) -> None:
        """Resume, unless requests already read wait for their turn."""
        if not self._pipeline:
            super().resume_reading()


class _Cycle(RequestResponseCycle):
    """uvicorn's request cycle, its body kept as the pieces the parser delivered."""

    pieces: list[bytes]
    waiting: int

    @classmethod
    def adopt(cls, cycle: RequestResponseCycle) -> None:
        """Turn the cycle uvicorn just made into one of these (nothing of its body came yet)."""
        cycle.__class__ = cls
        adopted = cast(_Cycle, cycle)
        adopted.pieces = []
        adopted.waiting = 0

    async def receive(self) -> Any:
        """The next ASGI message: what arrived since the last one, joined only if it came
        in several pieces (uvicorn's receive, without its copies)."""
        if self.waiting_for_100_continue and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.waiting_for_100_continue = False
        if not self.disconnected and not self.response_complete:
            self.flow.resume_reading()
            await self.message_event.wait()
            self.message_event.clear()
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        pieces, self.pieces, self.waiting = self.pieces, [], 0
        body = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        return {"type": "http.request", "body": body, "more_body": self.more_body}


class OpsHttpProtocol(GuardedHttpProtocol):
    """The guarded protocol for the ops listener, whose peers prove nothing (no auth).

    A connection is protected from the gate's eviction only while one of its requests is
    being answered to a peer that reads: idle between requests, in a head, or with a full
    write buffer it may be closed to make room, so whatever one peer holds open, a probe
    or a scrape gets in. Deadlines are short: probes and scrapes send their request at
    once and take milliseconds to answer. Its refusals are not webhook requests.
    """

    first_head_timeout = 5.0
    head_timeout = 5.0
    keep_alive = 5.0
    counted = False
    offers_authentication = False

    def on_headers_complete(self) -> None:
        """A request is being answered: protect the connection meanwhile."""
        super().on_headers_complete()
        if self.on_protect is not None:
            self.on_protect()

    def on_response_complete(self) -> None:
        """Answered: evictable again, unless a pipelined request is answered next."""
        super().on_response_complete()
        if not self.pipeline and self.on_evictable is not None:
            self.on_evictable()

    def pause_writing(self) -> None:
        """The peer does not read what it asked for: it protects nothing."""
        super().pause_writing()
        if self.on_evictable is not None:
            self.on_evictable()

    def resume_writing(self) -> None:
        """The peer reads again: protected while its request is answered."""
        super().resume_writing()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and self.on_protect is not None:
            self.on_protect()


class PeerInfoProtocol(GuardedHttpProtocol):
    """The guarded protocol that adds the TLS peer's names to every request scope."""

    _peer: dict[object, object] | None = None

    def connection_made(self, transport: Any) -> None:
        """Read the verified client certificate once per connection."""
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            cert = ssl_object.getpeercert()
            self._peer = {"names": peer_names(cert), "verified": bool(cert)}

    def on_message_begin(self) -> None:
        """Start a request's scope, then attach the connection's peer information."""
        super().on_message_begin()
        if self._peer is not None:
            self.scope.setdefault("extensions", {})[PEER_EXTENSION] = self._peer
