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
import re
import ssl
import stat
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


PEM_MAX = 1024 * 1024  # a certificate bundle is kilobytes; a bigger file is something else
_LABEL = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")
_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def build_server_context(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """The webhook's server context: TLS >= 1.2, and client certificates when `client_ca`.

    Raises TLSConfigError naming the setting and the path of the file that cannot be used.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION
    ctx.set_alpn_protocols(["http/1.1"])
    _load_chain(ctx, cert, key)
    if client_ca is not None:
        _certificates("HEALERT_TLS_CLIENT_CA", client_ca, "the CA certificates that signed "
                      "the apiserver's client certificate")
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


def _read(setting: str, path: Path) -> bytes:
    """The file's bytes, or TLSConfigError saying why it is not a readable PEM file.

    It is checked to be a regular file first: opening a FIFO or a device would block or
    read without end.
    """
    try:
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise TLSConfigError(f"{setting} {path}: is a directory, not a PEM file")
        if not stat.S_ISREG(mode):
            raise TLSConfigError(f"{setting} {path}: is not a regular file")
        with path.open("rb") as handle:
            data = handle.read(PEM_MAX + 1)
    except FileNotFoundError as exc:
        raise TLSConfigError(f"{setting} {path}: no such file") from exc
    except OSError as exc:
        raise TLSConfigError(f"{setting} {path}: cannot be read: {_why(exc)}") from exc
    if len(data) > PEM_MAX:
        raise TLSConfigError(f"{setting} {path}: larger than {PEM_MAX // 1024} KiB, not a "
                             "PEM file")
    if not data.strip():
        raise TLSConfigError(f"{setting} {path}: is empty")
    return data


def _not_pem(data: bytes, wanted: str) -> str:
    """Why `data` holds none of the PEM blocks wanted (its content is never shown)."""
    labels = {label.decode() for label in _LABEL.findall(data)}
    if any("PRIVATE KEY" in label for label in labels):
        return f"holds a private key, not {wanted}"
    if "CERTIFICATE" in labels:
        return f"holds a certificate, not {wanted}"
    if labels:
        return f"holds {', '.join(sorted(labels))} PEM data, not {wanted}"
    if data[:1] == b"\x30":  # an ASN.1 SEQUENCE: DER, the binary form of PEM's content
        return f"is binary (DER); expected {wanted} in PEM form (-----BEGIN ...)"
    return f"is not PEM (no -----BEGIN line); expected {wanted} in PEM form"


def _certificates(setting: str, path: Path, wanted: str) -> None:
    """Check that `path` holds parseable PEM certificates."""
    data = _read(setting, path)
    blocks = _CERT.findall(data)
    if not blocks:
        raise TLSConfigError(f"{setting} {path}: {_not_pem(data, wanted)}")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(
            cadata=b"\n".join(blocks).decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
        raise TLSConfigError(f"{setting} {path}: a certificate in it cannot be parsed "
                             f"({_why(exc)})") from exc


def _private_key(path: Path, cert: Path) -> None:
    """Check that `path` holds an unencrypted PEM private key (never showing any of it)."""
    data = _read("HEALERT_TLS_KEY", path)
    labels = [label.decode() for label in _LABEL.findall(data)]
    keys = [label for label in labels if "PRIVATE KEY" in label]
    if not keys:
        wanted = f"the private key of the certificate in HEALERT_TLS_CERT {cert}"
        raise TLSConfigError(f"HEALERT_TLS_KEY {path}: {_not_pem(data, wanted)}")
    if "ENCRYPTED PRIVATE KEY" in keys or b"Proc-Type: 4,ENCRYPTED" in data:
        raise TLSConfigError(f"HEALERT_TLS_KEY {path}: the private key is encrypted with a "
                             "passphrase, which the agent has no way to take; store it "
                             "unencrypted (openssl pkey -in KEY -out KEY.plain)")


def _no_passphrase() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal and hang a start.
    return b""


def _load_chain(ctx: ssl.SSLContext, cert: Path, key: Path) -> None:
    """Load the server certificate chain and key, naming the file that is wrong."""
    _certificates("HEALERT_TLS_CERT", cert, "the server certificate chain")
    _private_key(key, cert)
    try:
        ctx.load_cert_chain(certfile=str(cert), keyfile=str(key), password=_no_passphrase)
    except (OSError, ssl.SSLError) as exc:
        why = _why(exc)
        if "KEY_VALUES_MISMATCH" in why.upper():
            raise TLSConfigError(
                f"HEALERT_TLS_KEY {key} is not the key of the certificate in HEALERT_TLS_CERT "
                f"{cert} (the first certificate there must be the server's own, followed by "
                "its intermediates)") from exc
        raise TLSConfigError(
            f"HEALERT_TLS_CERT {cert} / HEALERT_TLS_KEY {key}: {why}") from exc


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
