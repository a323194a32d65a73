"""The door of each listener: count and cap connections, and do TLS with a deadline.

Every accepted TCP connection meets a `Gate` before any HTTP or TLS code runs. Two caps
bound what connections can cost: open connections, and TLS handshakes in progress (a TLS
session costs tens of KiB before the peer has proved anything). At a cap, one connection
is closed at once and counted, chosen among the *evictable* ones, least recently active
first: on the webhook, those on which no request has passed authentication yet; on the
ops listener, every connection not being answered right now (idle between requests
counts), taken from the peer address that holds the most of them. A flood from one
address so pushes out its own kind while a real client from another, whose handshake
and first request take milliseconds, gets through. Only when no open connection is
evictable is the new one refused instead (for the handshake cap: the oldest handshake).

The HTTP protocol (protocol.py) says when a connection turns protected or evictable.

A TLS handshake is done here, bounded by a deadline; one that fails or times out is
counted by reason and logged with the peer's address, aggregated per reason (a scanner
must not flood the log). Only then is the HTTP protocol handed the connection. The event
loop's own `ssl=` would start the TLS session inside the accept path, before anything of
ours could look at the connection, with a deadline uvicorn does not let us set.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from healert_webhook import metrics
from healert_webhook.logs import Limiter
from healert_webhook.protocol import GuardedHttpProtocol
from healert_webhook.tls import handshake_failure_reason

log = logging.getLogger(__name__)
_refusals = Limiter(log, per_interval=5, interval=60.0, what="connections refused")


@dataclass(frozen=True)
class Limits:
    """The bounds of one listener."""

    max_connections: int
    max_handshakes: int = 0  # TLS handshakes in progress at once (TLS listeners)
    handshake_timeout: float = 5.0


class Gate:
    """Counts, caps and (for TLS) handshakes the connections of one listener."""

    def __init__(self, listener: str, limits: Limits, ctx: ssl.SSLContext | None) -> None:
        self.listener = listener
        self.limits = limits
        self.ctx = ctx
        self.open = 0
        # Connections a cap may close, least recently active first: all of them, and per
        # peer address. Those in their TLS handshake are also in `_handshakes`.
        self._evictable: dict[_Door, None] = {}
        self._by_peer: dict[str, dict[_Door, None]] = {}
        self._handshakes: dict[_Door, asyncio.Future[None]] = {}
        self._open_gauge = metrics.CONNECTIONS_OPEN.labels(listener)

    @property
    def handshaking(self) -> int:
        """TLS handshakes in progress."""
        return len(self._handshakes)

    def factory(self, make_http: type[GuardedHttpProtocol]) -> Callable[..., asyncio.Protocol]:
        """A protocol factory for uvicorn: this gate in front of `make_http(**kwargs)`.

        The HTTP protocol is only built for an admitted connection.
        """

        def create(**kwargs: Any) -> asyncio.Protocol:
            door = _Door(self)

            def http() -> GuardedHttpProtocol:
                protocol = make_http(**kwargs)
                protocol.on_close = lambda: self.closed(door)
                protocol.on_protect = lambda: self.protect(door)
                protocol.on_evictable = lambda: self.evictable(door)
                return protocol

            door.http = http
            return door

        return create

    def closed(self, door: _Door) -> None:
        """An admitted connection ended (its HTTP protocol or a failed handshake says so)."""
        if door.counted:
            door.counted = False
            self.protect(door)
            self.open -= 1
            self._open_gauge.set(self.open)

    def protect(self, door: _Door) -> None:
        """The connection serves a client that proved itself: a cap never closes it."""
        if door in self._evictable:
            del self._evictable[door]
            peers = self._by_peer[door.peer]
            del peers[door]
            if not peers:
                del self._by_peer[door.peer]

    def evictable(self, door: _Door) -> None:
        """A cap may close the connection to make room; it is now the most recent."""
        if not door.counted:
            return
        self.protect(door)  # to the end of both orders
        self._evictable[door] = None
        self._by_peer.setdefault(door.peer, {})[door] = None

    def abort_handshakes(self) -> None:
        """Stopping: end the connections still in their handshake."""
        for door in list(self._handshakes):
            self._end_handshake(door)
            self.closed(door)
            if door.transport is not None:
                door.transport.abort()

    # -- used by the door ---------------------------------------------------------------

    def admit(self, door: _Door, transport: asyncio.Transport) -> bool:
        """Take the connection, making room under the caps first; False if refused."""
        door.peer = _peer_host(transport)
        if self.open >= self.limits.max_connections:
            victim = self._victim(door.peer)
            if victim is None:  # every connection is serving a client: refuse the new one
                self._refuse(transport, "max_connections", self.limits.max_connections)
                return False
            self._refuse(victim.transport, "max_connections", self.limits.max_connections,
                         victim)
        if self.ctx is not None and self.handshaking >= self.limits.max_handshakes:
            oldest = next(iter(self._handshakes))
            self._refuse(oldest.transport, "max_handshakes", self.limits.max_handshakes,
                         oldest)
        door.counted = True
        door.transport = transport
        self.open += 1
        self._open_gauge.set(self.open)
        self.evictable(door)
        return True

    def _victim(self, peer: str) -> _Door | None:
        """The connection to close for a new one from `peer`: the least recently active
        evictable one of the peer holding the most evictable connections (`peer` itself
        on a tie). A flood from one address so replaces its own connections, never those
        of a peer holding fewer (a probe, the apiserver opening several at once).

        Scans the peers: at most one per evictable connection, and only at the cap."""
        if not self._evictable:
            return None
        most = max(self._by_peer.values(), key=len)
        own = self._by_peer.get(peer)
        if own is not None and len(own) >= len(most):
            most = own
        return next(iter(most))

    def _refuse(self, transport: asyncio.Transport | None, reason: str, cap: int,
                door: _Door | None = None) -> None:
        metrics.CONNECTIONS_REFUSED.labels(self.listener, reason).inc()
        _refusals.warning("%s connection from %s closed at once: %s reached (%d)",
                          self.listener, _peer(transport), reason, cap, key=reason)
        if door is not None:
            self._end_handshake(door)
            self.closed(door)
        if transport is not None:
            transport.abort()

    def _end_handshake(self, door: _Door) -> asyncio.Future[None] | None:
        """Forget a handshake in progress (now, so the caps see it gone); its waiter."""
        waiter = self._handshakes.pop(door, None)
        if waiter is not None:
            metrics.HANDSHAKES_IN_PROGRESS.dec()
            waiter.cancel()  # a no-op once the handshake has ended
        return waiter

    def start_tls(self, door: _Door, transport: asyncio.Transport) -> None:
        """Put a TLS layer between the connection and a new HTTP protocol, now.

        What `loop.start_tls` does, but synchronously: the event loop starts reading as
        soon as `connection_made` returns, so the TLS layer must be in place by then or
        the client's first bytes would reach the door instead of the handshake.
        """
        assert self.ctx is not None and door.http is not None
        loop = asyncio.get_running_loop()
        protocol = door.http().for_transport()
        waiter: asyncio.Future[None] = loop.create_future()
        tls_layer = _ssl_protocol(loop)(
            loop, protocol, self.ctx, waiter, True, None,
            call_connection_made=False,
            ssl_handshake_timeout=self.limits.handshake_timeout)
        self._handshakes[door] = waiter
        metrics.HANDSHAKES_IN_PROGRESS.inc()
        transport.set_protocol(tls_layer)
        tls_layer.connection_made(transport)
        secure = tls_layer._get_app_transport()
        peer = _peer(transport)

        def done(result: asyncio.Future[None]) -> None:
            if self._end_handshake(door) is None:  # closed by a cap meanwhile
                return
            failure = asyncio.CancelledError() if result.cancelled() else result.exception()
            if failure is not None:
                transport.abort()
                self.closed(door)
                self._count_failure(failure, peer)
                return
            protocol.connection_made(secure)

        waiter.add_done_callback(done)

    def _count_failure(self, exc: BaseException, peer: str) -> None:
        if isinstance(exc, asyncio.CancelledError):  # closed by a cap or by stopping
            return
        if isinstance(exc, TimeoutError | ConnectionAbortedError):  # the loop's deadline
            metrics.HANDSHAKE_TIMEOUTS.inc()
            reason = "handshake_timeout"
            detail = f"no handshake within {self.limits.handshake_timeout:g} s"
        elif isinstance(exc, ssl.SSLError):
            reason = handshake_failure_reason(exc)
            metrics.WEBHOOK_AUTH_FAILURES.labels(reason).inc()
            detail = str(getattr(exc, "reason", None) or type(exc).__name__)
        else:  # the peer reset or closed during the handshake
            reason = "handshake_aborted"
            detail = type(exc).__name__
        _refusals.warning("%s TLS handshake from %s refused: %s (%s)", self.listener, peer,
                          reason, detail, key=reason)


class _Door(asyncio.Protocol):
    """The protocol of a connection until TLS or the HTTP protocol takes it over."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self.http: Callable[[], GuardedHttpProtocol] | None = None
        self.counted = False  # admitted and not yet closed
        self.transport: asyncio.Transport | None = None  # the TCP transport, once admitted
        self.peer = ""  # the peer's address, without the port

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Admit or refuse; then TLS, or the HTTP protocol at once for plain HTTP."""
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        if not self.gate.admit(self, transport):
            return
        if self.gate.ctx is not None:
            self.gate.start_tls(self, transport)
            return
        assert self.http is not None
        protocol = self.http().for_transport()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)


def _ssl_protocol(loop: asyncio.AbstractEventLoop) -> Any:
    """The TLS protocol class of `loop`: uvloop's own, else asyncio's."""
    import uvloop.loop  # uvicorn[standard] brings it; the agent always runs on it

    if isinstance(loop, uvloop.Loop):
        return uvloop.loop.SSLProtocol  # type: ignore[attr-defined]
    from asyncio import sslproto
    return sslproto.SSLProtocol


def _peer_host(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else ""


def _peer(transport: asyncio.BaseTransport | None) -> str:
    peer = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return "unknown peer"
