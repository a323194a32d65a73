"""TLS for the webhook listener: the server context, client names, handshake failures, reloads.

* `build_server_context` makes the one SSLContext uvicorn serves with (TLS 1.2 or newer;
  client certificates required when a client CA is configured).
* Handshake failures (no client certificate, one from another CA, an old TLS version)
  never reach the HTTP layer, so they are counted here: the context's `sslobject_class`
  is a subclass whose `do_handshake` records why a handshake failed. Both asyncio's and
  uvloop's TLS transports create their SSL objects through `SSLContext.wrap_bio`.
* The stdlib has no certificate-verify callback, so an allow-list of client names is
  checked per request: `PeerInfoProtocol` (uvicorn's httptools protocol plus a few lines)
  reads the verified peer certificate once per connection and puts its names in the ASGI
  scope under `extensions["healert.peer"]`; the webhook app answers 403 when they are not
  allowed.
* `GuardedHttpProtocol` bounds what uvicorn does not: a request head's size and time,
  and connections that never send a request.
* `FileWatch` notices when a file changed on disk, including Kubernetes' `..data` symlink
  swap, and `CertReloader` loads a renewed certificate into the SAME context, so new
  handshakes use it while open connections keep theirs.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from healert_webhook import metrics

log = logging.getLogger(__name__)
PEER_EXTENSION = "healert.peer"


class TLSConfigError(ValueError):
    """The certificate, key or CA files cannot be used; the message says which and why."""


def handshake_failure_reason(exc: ssl.SSLError) -> str:
    """A bounded metric label for why a TLS handshake failed."""
    reason = (getattr(exc, "reason", None) or "").upper()
    if "PEER_DID_NOT_RETURN_A_CERTIFICATE" in reason or "CERTIFICATE_REQUIRED" in reason:
        return "no_client_cert"
    if "CERTIFICATE_VERIFY_FAILED" in reason or "UNKNOWN_CA" in reason:
        return "untrusted_client_cert"
    if "VERSION" in reason or "PROTOCOL" in reason:
        return "tls_version"
    if "HTTP_REQUEST" in reason:
        return "plain_http"
    return "tls_handshake"


class CountingSSLObject(ssl.SSLObject):
    """An SSLObject that counts and logs failed server-side handshakes."""

    def do_handshake(self) -> None:
        """Run the handshake step; on a real failure, count its reason and re-raise."""
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise  # not a failure: the handshake needs more bytes
        except ssl.SSLError as exc:
            reason = handshake_failure_reason(exc)
            metrics.WEBHOOK_AUTH_FAILURES.labels(reason).inc()
            log.warning("webhook TLS handshake refused: %s (%s)", reason,
                        getattr(exc, "reason", None) or type(exc).__name__)
            raise


def build_server_context(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """The webhook's server context: TLS >= 1.2, and client certificates when `client_ca`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION
    ctx.sslobject_class = CountingSSLObject
    ctx.set_alpn_protocols(["http/1.1"])
    _load_chain(ctx, cert, key)
    if client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=str(client_ca))
        except (OSError, ssl.SSLError) as exc:
            raise TLSConfigError(f"HEALERT_TLS_CLIENT_CA {client_ca}: {_why(exc)}") from exc
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def _load_chain(ctx: ssl.SSLContext, cert: Path, key: Path) -> None:
    try:
        ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(
            f"HEALERT_TLS_CERT {cert} / HEALERT_TLS_KEY {key}: {_why(exc)}") from exc


def peer_names(peercert: dict[str, Any] | None) -> tuple[str, ...]:
    """The subject CN(s) and DNS SANs of a verified peer certificate (`getpeercert()`)."""
    if not peercert:
        return ()
    names: list[str] = []
    for rdn in peercert.get("subject", ()):
        names.extend(value for attr, value in rdn if attr == "commonName")
    names.extend(value for kind, value in peercert.get("subjectAltName", ()) if kind == "DNS")
    return tuple(names)


def allow_list(names: tuple[str, ...] | list[str]) -> frozenset[str]:
    """The configured client names, case-folded for `names_allowed`."""
    return frozenset(name.casefold() for name in names)


def names_allowed(names: tuple[str, ...], allowed: frozenset[str]) -> bool:
    """True when no allow-list is set or one of `names` is on it (case-insensitive).

    `allowed` comes from `allow_list`.
    """
    if not allowed:
        return True
    return any(name.casefold() in allowed for name in names)


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus the limits it lacks on a request's head.

    uvicorn (0.3x) buffers request lines and headers without bound, arms its idle timer
    only after a first response, and has no deadline for headers: one client could hold
    gigabytes in one endless header, or thousands of connections that never send a
    request. Here a head (request line and headers) over `max_head_bytes` is answered 431,
    one not complete within `head_timeout` seconds of its first byte is answered 408, and
    a new connection that sends nothing is closed after the keep-alive timeout, like an
    idle one between requests. Headers from the apiserver are a few hundred bytes.
    """

    max_head_bytes = 64 * 1024
    head_timeout = 30.0
    counted = True  # refusals count in healert_webhook_requests_total (False: ops listener)
    _head_bytes = 0
    _in_head = True
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        """Start the idle timer at once: a connection that never sends a request ends."""
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop the head timer with the connection."""
        self._stop_head_timer()
        super().connection_lost(exc)

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
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_expired)

    def on_headers_complete(self) -> None:
        """The head is complete: the body is the app's business (it has its own deadline)."""
        self._in_head = False
        self._stop_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        """The next bytes on this connection start a new head."""
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if self._in_head:
            self._refuse(408, f"request head not complete within {self.head_timeout:g} s")

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
        who = self.client[0] if self.client else "?"
        log.warning("connection from %s refused with %d: %s", who, code, why)
        if self.counted:
            metrics.WEBHOOK_REQUESTS.labels(str(code)).inc()


class OpsHttpProtocol(GuardedHttpProtocol):
    """The guarded protocol for the ops listener (its refusals are not webhook requests)."""

    counted = False


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
            self.scope["extensions"] = {PEER_EXTENSION: self._peer}


@dataclass(frozen=True)
class Signature:
    """What `os.stat` says about the file a path resolves to."""

    dev: int
    ino: int
    size: int
    mtime_ns: int


def signature(path: Path) -> Signature | None:
    """The stat signature of the file `path` resolves to (symlinks followed), or None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return Signature(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class FileWatch:
    """Tells when a file's content changed: stat signature first, then a content hash.

    The stat of the resolved path catches replacement by rename and Kubernetes' `..data`
    symlink swap (new inode); the hash avoids reloading when only the metadata changed and
    catches an in-place rewrite that kept the size within one mtime tick.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sig = signature(path)
        self._digest = self._hash()

    def _hash(self) -> str | None:
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            return None

    def changed(self, force: bool = False) -> bool:
        """True when the content differs from the last call (blocking: run in a thread)."""
        sig = signature(self.path)
        if sig == self._sig and not force:
            return False
        self._sig = sig
        digest = self._hash()
        if digest is None or digest == self._digest:
            return False
        self._digest = digest
        return True

    def forget(self) -> None:
        """Make the next `changed()` re-read the file (after a failed reload: try again)."""
        self._sig = None
        self._digest = None


class CertReloader:
    """Loads a renewed server certificate and key into the live SSLContext."""

    def __init__(self, ctx: ssl.SSLContext, cert: Path, key: Path) -> None:
        self.ctx = ctx
        self.cert = cert
        self.key = key
        self._watches = (FileWatch(cert), FileWatch(key))

    def pending(self, force: bool = False) -> bool:
        """True when the files changed and form a usable pair (blocking: run in a thread).

        The pair is first loaded into a scratch context: loading a certificate whose key
        is not written yet into the live context would leave it without a usable key.
        """
        changed = [watch.changed(force) for watch in self._watches]
        if not any(changed):
            return False
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            _load_chain(probe, self.cert, self.key)
        except TLSConfigError as exc:
            log.error("server certificate changed but cannot be used yet, keeping the "
                      "current one: %s", exc)
            for watch in self._watches:
                watch.forget()  # retry on the next check: the other half may be on its way
            return False
        return True

    def apply(self) -> bool:
        """Load the certificate into the live context; new handshakes use it."""
        try:
            _load_chain(self.ctx, self.cert, self.key)
        except TLSConfigError as exc:
            log.error("server certificate reload failed: %s", exc)
            for watch in self._watches:
                watch.forget()
            return False
        log.info("server certificate reloaded from %s", self.cert)
        return True
