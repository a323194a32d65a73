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
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, cast

from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from healert_webhook import metrics
from healert_webhook.logs import Limiter
from healert_webhook.tls import peer_names

log = logging.getLogger(__name__)
_refused_log = Limiter(log, per_interval=5, interval=60.0, what="request heads refused")
PEER_EXTENSION = "healert.peer"
# In the scope of a request on a connection not yet proven, `{"call": ...}`: call it once
# the request has passed authentication, and the connection is never closed for room.
AUTHENTICATED_EXTENSION = "healert.authenticated"


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
    _head_bytes = 0
    _in_head = True
    _head_timer: asyncio.TimerHandle | None = None
    _head_limit = ""  # what the head timer enforces, for the 408's message

    def connection_made(self, transport: Any) -> None:
        """Start the first head's deadline at once: a connection must show a request."""
        super().connection_made(transport)
        if self.keep_alive is not None:
            self.timeout_keep_alive = self.keep_alive  # type: ignore[assignment]
        self._start_head_timer(self.first_head_timeout, "of connecting")

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop the head timer with the connection; tell the gate."""
        self._stop_head_timer()
        if self.transport is not None:  # else a TLS handshake failed: it never began
            super().connection_lost(exc)
        if self.on_close is not None:
            self.on_close()
            self.on_close = None

    def data_received(self, data: bytes) -> None:
        """Feed the parser, counting head bytes; refuse a head over the limit."""
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
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.__class__ is RequestResponseCycle:  # a new request
            _Cycle.adopt(cycle)

    def on_body(self, body: bytes) -> None:
        """Keep the piece as it came; pause reading past the high-water mark."""
        cycle = self.cycle
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
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0

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

    def _refuse(self, code: int, why: str) -> None:
        if self.transport.is_closing():
            return
        self._stop_head_timer()
        body = b'{"error":"%s"}' % why.encode("ascii")
        reason = b"Request Header Fields Too Large" if code == 431 else b"Request Timeout"
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s"
            % (code, reason, len(body), body))
        self.transport.close()
        who = f"{self.client[0]}:{self.client[1]}" if self.client else "unknown peer"
        _refused_log.warning("connection from %s refused with %d: %s", who, code, why,
                             key=str(code))
        if self.counted:
            metrics.WEBHOOK_REQUESTS.labels(str(code)).inc()


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
