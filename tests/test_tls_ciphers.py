"""The webhook's ciphers: AEAD with ECDHE only, and the client's order chooses among them.

The apiserver (Go) lists AES-128-GCM first on CPUs with AES instructions, where it is the
fastest; a server that imposed its own order would make every batch pay for AES-256-GCM.
Real handshakes over loopback against the context the listener serves with, with
certificates the test makes; TLS 1.3's order is set through `openssl s_client` (Python
cannot order TLS 1.3 suites), so that test needs the openssl command.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from healert_webhook import tls

from support.pki import PKI, client_context, make_pki

AES128 = "ECDHE-ECDSA-AES128-GCM-SHA256"
AES256 = "ECDHE-ECDSA-AES256-GCM-SHA384"


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    """A CA and the server's certificate (ECDSA, as trustme makes them)."""
    return make_pki(tmp_path / "pki")


@contextmanager
def tls_server(pki: PKI) -> Iterator[tuple[int, list[str]]]:
    """A loopback server on the listener's context; yields its port and the ciphers it
    negotiated, one per connection (the empty string for a failed handshake)."""
    ctx = tls.build_server_context(pki.server_cert, pki.server_key, None)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    chosen: list[str] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with raw:
                raw.settimeout(10)
                try:
                    with ctx.wrap_socket(raw, server_side=True) as conn:
                        cipher = conn.cipher()
                        chosen.append(cipher[0] if cipher else "")
                        conn.sendall(b"ok")
                except (ssl.SSLError, OSError):
                    chosen.append("")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], chosen
    finally:
        stop.set()
        thread.join(timeout=10)
        listener.close()


def negotiate(port: int, ctx: ssl.SSLContext) -> str | None:
    """The cipher a new connection settles on, or None when the handshake fails."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
            conn.recv(2)
            cipher = conn.cipher()
            return cipher[0] if cipher else None
    except (ssl.SSLError, OSError):
        return None


def tls12_client(pki: PKI, ciphers: str) -> ssl.SSLContext:
    ctx = client_context(pki)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(ciphers)
    return ctx


def test_only_aead_ciphers_with_forward_secrecy_are_offered(pki: PKI) -> None:
    ctx = tls.build_server_context(pki.server_cert, pki.server_key, None)
    offered = ctx.get_ciphers()
    assert offered
    for cipher in offered:
        assert cipher["aead"], cipher["name"]
        assert cipher["protocol"] == "TLSv1.3" or cipher["kea"] == "kx-ecdhe", cipher["name"]
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert not ctx.options & ssl.OP_CIPHER_SERVER_PREFERENCE


def test_the_clients_order_chooses_the_cipher_over_tls_1_2(pki: PKI) -> None:
    with tls_server(pki) as (port, _):
        assert negotiate(port, tls12_client(pki, f"{AES128}:{AES256}")) == AES128
        assert negotiate(port, tls12_client(pki, f"{AES256}:{AES128}")) == AES256


def test_a_client_offering_no_aead_cipher_is_refused(pki: PKI) -> None:
    with tls_server(pki) as (port, chosen):
        assert negotiate(port, tls12_client(pki, "ECDHE-ECDSA-AES128-SHA256")) is None
        assert negotiate(port, tls12_client(pki, AES128)) == AES128  # the server is up
    assert chosen == ["", AES128]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_the_clients_order_chooses_the_suite_over_tls_1_3(pki: PKI) -> None:
    """As the apiserver connects: TLS 1.3, AES-128-GCM first."""
    with tls_server(pki) as (port, chosen):
        for order in ("TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384",
                      "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256"):
            subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
                            "-tls1_3", "-ciphersuites", order, "-CAfile", str(pki.ca_file)],
                           input=b"", capture_output=True, timeout=30, check=False)
    assert chosen == ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384"]
