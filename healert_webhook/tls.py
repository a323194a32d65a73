"""TLS for the webhook listener: the server context, why handshakes fail, reloads.

* `build_server_context` makes the one SSLContext uvicorn serves with (TLS 1.2 or newer;
  client certificates required when a client CA is configured).
* `handshake_failure_reason` names why a handshake failed (no client certificate, one
  from another CA, an old TLS version) as a bounded label; the gate in front of the
  listener (connections.py) runs the handshakes and counts their failures.
* The stdlib has no certificate-verify callback, so an allow-list of client names is
  checked per request (auth.py), from the names `peer_names` reads off the verified
  peer certificate once per connection (protocol.py).
* `CertReloader` loads a renewed certificate into the SAME context, so new handshakes use
  it while open connections keep theirs.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Any

from healert_webhook.filewatch import FileWatch

log = logging.getLogger(__name__)


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


def build_server_context(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """The webhook's server context: TLS >= 1.2, and client certificates when `client_ca`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION
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
