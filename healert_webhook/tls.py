"""TLS for the webhook listener: the server context, why handshakes fail, reloads.

* `build_server_context` makes the one SSLContext uvicorn serves with (TLS 1.2 or newer,
  AEAD ciphers with ECDHE only, the client's order choosing among them; client
  certificates required when a client CA is configured).
* `handshake_failure_reason` names why a handshake failed (no client certificate, one
  from another CA, an old TLS version) as a bounded label; the gate in front of the
  listener (connections.py) runs the handshakes and counts their failures.
* The stdlib has no certificate-verify callback, so an allow-list of client names is
  checked per request (auth.py), from the names `peer_names` reads off the verified
  peer certificate once per connection (protocol.py).
* `CertReloader` loads a renewed certificate into the SAME context, so new handshakes use
  it while open connections keep theirs. A replacement every apiserver would refuse is
  not loaded: one outside its validity, or one that shares no name with the certificate
  in use (`ServingCert`, read from the certificate itself). The agent cannot know which
  name the apiserver dials (the shipped kubeconfigs send a `tls-server-name`, others the
  address), so a replacement must keep at least one name of the one in use: a renewal
  keeps them all, a certificate of another service shares none. A rename is done in two
  steps (both names, then the new one) or by a restart, which takes any valid pair.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from healert_webhook import metrics
from healert_webhook.config import env
from healert_webhook.filewatch import FileWatch, NotRegularFile, read_regular

log = logging.getLogger(__name__)


class TLSConfigError(ValueError):
    """The certificate, key or CA files cannot be used; the message says which and why."""


# Every reason handshake_failure_reason gives.
HANDSHAKE_REASONS = ("no_client_cert", "untrusted_client_cert", "tls_version", "plain_http",
                     "tls_handshake")


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


# TLS 1.2: forward secrecy (ECDHE) and authenticated encryption (GCM, ChaCha20-Poly1305)
# only: CBC modes and RSA key exchange, which older clients still offer, are left out.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
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
    ctx.set_ciphers(TLS12_CIPHERS)  # TLS 1.3's suites are all AEAD already
    # A server imposes its order to keep clients off weak ciphers; with none offered, the
    # client's order is as safe, and the apiserver's (Go) is the fastest for its CPU:
    # AES-128-GCM first with AES instructions (1.3x AES-256-GCM here), ChaCha20 without.
    ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_alpn_protocols(["http/1.1"])
    _load_chain(ctx, cert, key)
    if client_ca is not None:
        _certificates(f"{env('tls_client_ca')}", client_ca, "the CA certificates that signed "
                      "the apiserver's client certificate")
        try:
            ctx.load_verify_locations(cafile=str(client_ca))
        except (OSError, ssl.SSLError) as exc:
            raise TLSConfigError(f"{env('tls_client_ca')} {client_ca}: {_why(exc)}") from exc
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

    Read without ever blocking: a FIFO or a device at the path is refused at once
    (filewatch.read_regular), and no more than PEM_MAX + 1 bytes are read.
    """
    try:
        data = read_regular(path, PEM_MAX)
    except FileNotFoundError as exc:
        raise TLSConfigError(f"{setting} {path}: no such file") from exc
    except NotRegularFile as exc:
        kind = (exc.strerror or "not a regular file").replace(", not a regular file", "")
        raise TLSConfigError(f"{setting} {path}: {kind}, not a PEM file") from exc
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
    data = _read(f"{env('tls_key')}", path)
    labels = [label.decode() for label in _LABEL.findall(data)]
    keys = [label for label in labels if "PRIVATE KEY" in label]
    if not keys:
        wanted = f"the private key of the certificate in {env('tls_cert')} {cert}"
        raise TLSConfigError(f"{env('tls_key')} {path}: {_not_pem(data, wanted)}")
    if "ENCRYPTED PRIVATE KEY" in keys or b"Proc-Type: 4,ENCRYPTED" in data:
        raise TLSConfigError(f"{env('tls_key')} {path}: the private key is encrypted with a "
                             "passphrase, which the agent has no way to take; store it "
                             "unencrypted (openssl pkey -in KEY -out KEY.plain)")


def _no_passphrase() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal and hang a start.
    return b""


def _load_chain(ctx: ssl.SSLContext, cert: Path, key: Path) -> None:
    """Load the server certificate chain and key, naming the file that is wrong."""
    _certificates(f"{env('tls_cert')}", cert, "the server certificate chain")
    _private_key(key, cert)
    try:
        ctx.load_cert_chain(certfile=str(cert), keyfile=str(key), password=_no_passphrase)
    except (OSError, ssl.SSLError) as exc:
        why = _why(exc)
        if "KEY_VALUES_MISMATCH" in why.upper():
            raise TLSConfigError(
                f"{env('tls_key')} {key} is not the key of the certificate in {env('tls_cert')} "
                f"{cert} (the first certificate there must be the server's own, followed by "
                "its intermediates)") from exc
        raise TLSConfigError(
            f"{env('tls_cert')} {cert} / {env('tls_key')} {key}: {why}") from exc


def peer_names(peercert: dict[str, Any] | None) -> tuple[str, ...]:
    """The subject CN(s) and DNS SANs of a verified peer certificate (`getpeercert()`)."""
    if not peercert:
        return ()
    names: list[str] = []
    for rdn in peercert.get("subject", ()):
        names.extend(value for attr, value in rdn if attr == "commonName")
    names.extend(value for kind, value in peercert.get("subjectAltName", ()) if kind == "DNS")
    return tuple(names)


# -- what a serving certificate is good for ----------------------------------------------

_SAN = b"\x55\x1d\x11"  # the OID 2.5.29.17, subjectAltName
_CN = b"\x55\x04\x03"  # the OID 2.5.4.3, commonName


@dataclass(frozen=True)
class ServingCert:
    """The validity and the names of a server certificate (the first of its chain).

    `names` are its DNS names (lower case) and IP addresses; its subject CN only when it
    has no subjectAltName (Go clients, the apiserver among them, ignore the CN then).
    """

    not_before: datetime
    not_after: datetime
    names: frozenset[str]

    def validity_problem(self, now: float) -> str | None:
        """Why no client accepts it at `now` (Unix time), or None."""
        if now < self.not_before.timestamp():
            return f"not valid until {_when(self.not_before)}"
        if now > self.not_after.timestamp():
            return f"expired at {_when(self.not_after)}"
        return None

    def shares_a_name(self, other: ServingCert) -> bool:
        """True when a name `other` serves is served by this one too (wildcards count)."""
        return any(_covers(mine, theirs) or _covers(theirs, mine)
                   for mine in self.names for theirs in other.names)

    def shown_names(self) -> str:
        """Its names for a log line."""
        return ", ".join(sorted(self.names)) or "none"


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _covers(pattern: str, name: str) -> bool:
    """`pattern` names `name`: the same, or a wildcard for its first label."""
    if pattern == name:
        return True
    return (pattern.startswith("*.") and "." in name
            and name.split(".", 1)[1] == pattern[2:])


def serving_cert(setting: str, path: Path, data: bytes) -> ServingCert:
    """What the first certificate of the PEM chain `data` is good for (TLSConfigError
    naming `setting` and `path` when it cannot be read)."""
    block = _CERT.search(data)
    try:
        if block is None:
            raise ValueError("no certificate")
        return _read_der(ssl.PEM_cert_to_DER_cert(block.group().decode("ascii")))
    except (ValueError, IndexError, UnicodeDecodeError) as exc:
        raise TLSConfigError(f"{setting} {path}: the server certificate cannot be read "
                             f"({exc})") from exc


def _tlv(der: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of the value, end of the value) of the DER element at `at`."""
    tag, size = der[at], der[at + 1]
    at += 2
    if size & 0x80:
        count = size & 0x7F
        if not 1 <= count <= 4:
            raise ValueError("bad DER length")
        size = int.from_bytes(der[at:at + count], "big")
        at += count
    if at + size > len(der):
        raise ValueError("truncated DER")
    return tag, at, at + size


def _children(der: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    at = start
    while at < end:
        tag, value, stop = _tlv(der, at)
        yield tag, value, stop
        at = stop


def _read_der(der: bytes) -> ServingCert:
    """Validity, SAN and CN of an X.509 certificate, by walking its DER (RFC 5280 4.1)."""
    _, cert, _ = _tlv(der, 0)
    _, tbs, tbs_end = _tlv(der, cert)
    fields = list(_children(der, tbs, tbs_end))
    if fields and fields[0][0] == 0xA0:  # [0] version
        fields = fields[1:]
    # serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo, ...
    _, valid, valid_end = fields[3]
    not_before, not_after = (_time(der, tag, start, stop)
                             for tag, start, stop in _children(der, valid, valid_end))
    names: set[str] = set()
    for tag, start, _ in fields[6:]:
        if tag == 0xA3:  # [3] extensions
            names |= _alt_names(der, start)
    if not names:
        names |= _common_names(der, fields[4][1], fields[4][2])
    return ServingCert(not_before, not_after, frozenset(names))


def _time(der: bytes, tag: int, start: int, stop: int) -> datetime:
    text = der[start:stop].decode("ascii")
    if tag == 0x17:  # UTCTime: YYMMDDHHMMSSZ, 1950 to 2049
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif tag != 0x18:  # GeneralizedTime: YYYYMMDDHHMMSSZ
        raise ValueError("bad validity time")
    return datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=UTC)


def _alt_names(der: bytes, start: int) -> set[str]:
    names: set[str] = set()
    _, seq, seq_end = _tlv(der, start)
    for _, ext, ext_end in _children(der, seq, seq_end):
        parts = list(_children(der, ext, ext_end))
        if der[parts[0][1]:parts[0][2]] != _SAN:
            continue
        _, value, value_end = _tlv(der, parts[-1][1])  # inside the OCTET STRING
        for tag, name, name_end in _children(der, value, value_end):
            if tag == 0x82:  # dNSName
                names.add(der[name:name_end].decode("ascii").lower())
            elif tag == 0x87:  # iPAddress
                names.add(str(ipaddress.ip_address(der[name:name_end])))
    return names


def _common_names(der: bytes, start: int, stop: int) -> set[str]:
    names: set[str] = set()
    for _, rdn, rdn_end in _children(der, start, stop):
        for _, pair, pair_end in _children(der, rdn, rdn_end):
            oid, value = list(_children(der, pair, pair_end))[:2]
            if der[oid[1]:oid[2]] == _CN:
                names.add(der[value[1]:value[2]].decode("utf-8", "replace").lower())
    return names


# -- reloading --------------------------------------------------------------------------

class CertReloader:
    """Loads a renewed server certificate and key into the live SSLContext, if usable.

    `pending()` (blocking: run in a thread) checks a changed pair in a scratch context and
    against the certificate in use; `apply()` (on the loop thread, where the handshakes
    run) loads it. A refused replacement is logged once, then checked again every time
    (a certificate issued seconds ahead of this node's clock becomes valid; the other half
    of a pair arrives), and logged again only when its files or the reason change.
    """

    def __init__(self, ctx: ssl.SSLContext, cert: Path, key: Path,
                 clock: Callable[[], float] = time.time) -> None:
        self.ctx = ctx
        self.cert = cert
        self.key = key
        self.clock = clock
        self._watches = (FileWatch(cert), FileWatch(key))
        self.current = serving_cert(f"{env('tls_cert')}", cert, _read(f"{env('tls_cert')}", cert))
        self._checked: tuple[str, ServingCert] | None = None  # a usable pair: digest, cert
        self._refused: tuple[str, str] | None = None  # the refusal logged: digest, reason
        metrics.TLS_CERT_EXPIRY.set(self.current.not_after.timestamp())
        problem = self.ready()
        if problem:
            log.error("%s: every TLS handshake fails until a valid certificate is in place "
                      "(it is loaded within a second); /readyz says so meanwhile", problem)

    def ready(self) -> str | None:
        """None while the certificate in use is valid, else why no client takes it."""
        problem = self.current.validity_problem(self.clock())
        return f"serving certificate {problem}" if problem else None

    def pending(self, force: bool = False) -> bool:
        """True when the files changed and hold a pair to use (blocking: run in a thread)."""
        changed = [watch.changed(force) for watch in self._watches]
        if not any(changed) and self._refused is None:
            return False
        digest, problem = self._check()
        if problem is None:
            self._refused = None
            return True
        if self._refused != (digest, problem):  # once per change of the files or reason
            self._refused = (digest, problem)
            metrics.TLS_CERT_RELOADS.labels("refused").inc()
            log.error("server certificate changed but is not used, keeping the one in use "
                      "(valid until %s): %s", _when(self.current.not_after), problem)
        return False

    def _check(self) -> tuple[str, str | None]:
        """The pair's digest, and why it cannot replace the one in use (None: it can)."""
        self._checked = None
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            digest = self._digest()
            # In a scratch context first: loading a certificate whose key is not written
            # yet into the live context would leave it without a usable key.
            _load_chain(probe, self.cert, self.key)
            new = serving_cert(f"{env('tls_cert')}", self.cert,
                               _read(f"{env('tls_cert')}", self.cert))
        except TLSConfigError as exc:
            return "", str(exc)
        problem = new.validity_problem(self.clock())
        if problem is None and not new.shares_a_name(self.current):
            problem = (f"its names ({new.shown_names()}) share none with the certificate "
                       f"in use ({self.current.shown_names()}), which the apiserver dials")
        if problem is not None:
            return digest, f"{env('tls_cert')} {self.cert}: {problem}"
        self._checked = (digest, new)
        return digest, None

    def _digest(self) -> str:
        hashed = hashlib.sha256(_read(f"{env('tls_cert')}", self.cert))
        hashed.update(_read(f"{env('tls_key')}", self.key))
        return hashed.hexdigest()

    def apply(self) -> bool:
        """Load the pair `pending()` checked into the live context; new handshakes use it.

        Not if the files changed since (the next check sees them): what is loaded is
        what was checked, but for a write landing between the two reads of this call.
        """
        checked = self._checked
        self._checked = None
        try:
            if checked is None or self._digest() != checked[0]:
                return False
            _load_chain(self.ctx, self.cert, self.key)
        except TLSConfigError as exc:
            log.error("server certificate reload failed, keeping the one in use: %s", exc)
            return False
        new = checked[1]
        dropped = self.current.names - new.names
        self.current = new
        metrics.TLS_CERT_EXPIRY.set(new.not_after.timestamp())
        metrics.TLS_CERT_RELOADS.labels("loaded").inc()
        log.info("server certificate reloaded from %s: valid until %s, names %s", self.cert,
                 _when(new.not_after), new.shown_names())
        if dropped:
            log.warning("the new server certificate no longer names %s: an apiserver "
                        "dialing that name now fails its handshakes",
                        ", ".join(sorted(dropped)))
        return True
