"""TLS on the webhook listener: who may connect, old versions, certificates renewed in place.

Real handshakes against the in-process server (tests/support/webhooks.py), with certificates
the test makes.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from healert_webhook import tls
from healert_webhook.outbox import Outbox

from support.events import event_list, exec_event
from support.pki import (
    PKI,
    client_context,
    handshake_error,
    make_pki,
    server_common_name,
)
from support.servers import sample, wait_for
from support.webhooks import JSON, queued, webhook


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "state" / "outbox.db")
    yield box
    box.close()


def test_no_client_certificate_is_refused_at_handshake_and_counted(
        tmp_path: Path, pki: PKI, outbox: Outbox) -> None:
    before = sample("healert_webhook_auth_failures_total", reason="no_client_cert")
    with webhook(tmp_path, outbox, pki) as hook:
        assert handshake_error(hook.port, client_context(pki)) is not None
        wait_for(lambda: sample("healert_webhook_auth_failures_total",
                                reason="no_client_cert") == before + 1, what="count")
        with hook.client(cert=None) as c, pytest.raises(httpx.TransportError):
            c.post(hook.url, content=event_list([exec_event(1)]), headers=JSON)
    assert queued(outbox) == []


def test_certificate_from_another_ca_is_refused_and_counted(
        tmp_path: Path, pki: PKI, outbox: Outbox) -> None:
    before = sample("healert_webhook_auth_failures_total", reason="untrusted_client_cert")
    stranger = pki.client(ca=trustme.CA())
    with webhook(tmp_path, outbox, pki) as hook:
        assert handshake_error(hook.port, client_context(pki, stranger)) is not None
        wait_for(lambda: sample("healert_webhook_auth_failures_total",
                                reason="untrusted_client_cert") == before + 1, what="count")


def test_tls_below_1_2_is_refused(tmp_path: Path, pki: PKI, outbox: Outbox) -> None:
    before = sample("healert_webhook_auth_failures_total", reason="tls_version")
    with webhook(tmp_path, outbox, pki) as hook:
        old = client_context(pki, pki.client(), maximum=ssl.TLSVersion.TLSv1_1)
        assert handshake_error(hook.port, old) is not None
        # the server saw the old ClientHello and refused it (not just the client giving up)
        wait_for(lambda: sample("healert_webhook_auth_failures_total",
                                reason="tls_version") == before + 1, what="count")
        modern = client_context(pki, pki.client())
        modern.maximum_version = ssl.TLSVersion.TLSv1_2
        assert handshake_error(hook.port, modern) is None  # 1.2 itself is fine


def test_certificate_rotation_reaches_new_connections(
        tmp_path: Path, pki: PKI, outbox: Outbox) -> None:
    with webhook(tmp_path, outbox, pki) as hook:
        assert hook.ctx is not None
        ctx = client_context(pki, pki.client())
        assert server_common_name(hook.port, ctx) == "healert-webhook-1"
        reloader = tls.CertReloader(hook.ctx, pki.server_cert, pki.server_key)
        assert reloader.pending() is False  # nothing changed yet
        with hook.client() as kept:  # a connection opened before the rotation
            assert kept.post(hook.url, content=b"[]", headers=JSON).status_code == 200
            pki.reissue_server("healert-webhook-2")
            assert reloader.pending() is True
            assert reloader.apply() is True
            assert server_common_name(hook.port, ctx) == "healert-webhook-2"
            assert kept.post(hook.url, content=b"[]", headers=JSON).status_code == 200


def test_half_written_certificate_pair_is_not_loaded(tmp_path: Path, pki: PKI) -> None:
    ctx = tls.build_server_context(pki.server_cert, pki.server_key, None)
    reloader = tls.CertReloader(ctx, pki.server_cert, pki.server_key)
    old_key = pki.server_key.read_bytes()
    pki.reissue_server("healert-webhook-2")
    pki.server_key.write_bytes(old_key)  # the new certificate arrived, its key not yet
    assert reloader.pending() is False
    pki.reissue_server("healert-webhook-3")
    assert reloader.pending() is True


def test_bad_tls_files_give_a_clear_error(tmp_path: Path, pki: PKI) -> None:
    with pytest.raises(tls.TLSConfigError, match="HEALERT_TLS_CERT"):
        tls.build_server_context(pki.server_cert, pki.ca_file, None)
    with pytest.raises(tls.TLSConfigError, match="HEALERT_TLS_CLIENT_CA"):
        tls.build_server_context(pki.server_cert, pki.server_key, tmp_path / "missing")
