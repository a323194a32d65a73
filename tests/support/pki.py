"""A test PKI and TLS clients.

Certificates are real, made with `trustme` per test in a tmp dir: a CA, the webhook's
server certificate for 127.0.0.1/localhost, client certificates for the apiserver, and a
second, unrelated CA for "certificate from another CA" cases.
"""

from __future__ import annotations

import socket
import ssl
import warnings
from dataclasses import dataclass
from pathlib import Path

import trustme

CLIENT_NAME = "kube-apiserver-audit"


@dataclass
class PKI:
    """Files of one test PKI."""

    dir: Path
    ca: trustme.CA
    ca_file: Path  # the CA bundle clients trust and the server checks clients against
    server_cert: Path  # server certificate chain (PEM)
    server_key: Path

    def client(self, name: str = CLIENT_NAME, *, ca: trustme.CA | None = None) -> Path:
        """A client certificate (CN and DNS SAN `name`) with its key, in one PEM file."""
        leaf = (ca or self.ca).issue_cert(name, common_name=name)
        path = self.dir / f"client-{name}-{id(leaf)}.pem"
        leaf.private_key_and_cert_chain_pem.write_to_path(str(path))
        return path

    def reissue_server(self, common_name: str) -> None:
        """Replace the server certificate and key in place (what cert-manager does)."""
        leaf = self.ca.issue_cert("127.0.0.1", "localhost", common_name=common_name)
        leaf.private_key_pem.write_to_path(str(self.server_key))
        leaf.cert_chain_pems[0].write_to_path(str(self.server_cert))
        for extra in leaf.cert_chain_pems[1:]:
            extra.write_to_path(str(self.server_cert), append=True)


def make_pki(directory: Path, server_cn: str = "healert-webhook-1") -> PKI:
    """A CA and a server certificate for 127.0.0.1 and localhost under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    ca_file = directory / "ca.crt"
    ca.cert_pem.write_to_path(str(ca_file))
    pki = PKI(directory, ca, ca_file, directory / "server.crt", directory / "server.key")
    pki.reissue_server(server_cn)
    return pki


def client_context(pki: PKI, client_pem: Path | None = None, *,
                   maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    """A client context trusting the test CA, presenting `client_pem` if given."""
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    if client_pem is not None:
        ctx.load_cert_chain(str(client_pem))
    if maximum is not None:
        with warnings.catch_warnings():  # old versions are deprecated: that is the point
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
            ctx.maximum_version = maximum
        ctx.set_ciphers("ALL:@SECLEVEL=0")  # let an old-version client even try
    return ctx


def server_common_name(port: int, ctx: ssl.SSLContext) -> str:
    """Open a NEW connection and return the CN of the certificate the server presents."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
        cert = conn.getpeercert()
    assert cert is not None
    for rdn in cert["subject"]:
        for attr, value in rdn:
            if attr == "commonName":
                return str(value)
    raise AssertionError("server certificate has no CN")


def handshake_error(port: int, ctx: ssl.SSLContext) -> BaseException | None:
    """Connect, finish the handshake and send one request; the error seen, or None.

    With TLS 1.3 a server that refuses the client certificate says so after the client
    considers the handshake done, so the error can arrive on the first read.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            data = conn.recv(1024)
            if not data:
                return ConnectionResetError("closed without an answer")
    except (ssl.SSLError, OSError) as exc:
        return exc
    return None
