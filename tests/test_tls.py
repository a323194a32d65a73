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
from cryptography.hazmat.primitives import serialization

from healert_webhook import tls
from healert_webhook.outbox import Outbox

from support.agent import Agent, serve_args
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
    with pytest.raises(tls.TLSConfigError, match=r"^HEALERT_TLS_KEY .*ca\.crt: holds a cert"):
        tls.build_server_context(pki.server_cert, pki.ca_file, None)
    with pytest.raises(tls.TLSConfigError, match="HEALERT_TLS_CLIENT_CA"):
        tls.build_server_context(pki.server_cert, pki.server_key, tmp_path / "missing")


# -- unusable certificate files: `serve` names the setting and the path, exits 2 -----------

def unusable_files(tmp_path: Path, pki: PKI) -> dict[str, Path]:
    """Files of every wrong kind a mounted Secret or a typo can give."""
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "garbage.pem").write_bytes(b"this is not a certificate\n\x00\xff")
    (bad / "empty.pem").write_bytes(b"")
    (bad / "a-directory").mkdir()
    chain = pki.server_cert.read_text()
    (bad / "server.der").write_bytes(ssl.PEM_cert_to_DER_cert(chain))
    key = serialization.load_pem_private_key(pki.server_key.read_bytes(), password=None)
    (bad / "encrypted.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase")))
    other = trustme.CA().issue_cert("127.0.0.1")
    (bad / "other.key").write_bytes(other.private_key_pem.bytes())
    return {"garbage": bad / "garbage.pem", "empty": bad / "empty.pem",
            "missing": bad / "missing.pem", "directory": bad / "a-directory",
            "der": bad / "server.der", "encrypted": bad / "encrypted.key",
            "other_key": bad / "other.key", "key": pki.server_key, "cert": pki.server_cert}


# (setting, file put there, what the message must say besides the setting and the path)
UNUSABLE = [
    ("HEALERT_TLS_CERT", "garbage", "not PEM"),
    ("HEALERT_TLS_CERT", "empty", "is empty"),
    ("HEALERT_TLS_CERT", "missing", "no such file"),
    ("HEALERT_TLS_CERT", "directory", "is a directory"),
    ("HEALERT_TLS_CERT", "key", "holds a private key, not the server certificate"),
    ("HEALERT_TLS_CERT", "der", "binary (DER)"),
    ("HEALERT_TLS_KEY", "garbage", "not PEM"),
    ("HEALERT_TLS_KEY", "missing", "no such file"),
    ("HEALERT_TLS_KEY", "directory", "is a directory"),
    ("HEALERT_TLS_KEY", "cert", "holds a certificate, not the private key"),
    ("HEALERT_TLS_KEY", "encrypted", "encrypted with a passphrase"),
    ("HEALERT_TLS_KEY", "other_key", "is not the key of the certificate in HEALERT_TLS_CERT"),
    ("HEALERT_TLS_CLIENT_CA", "garbage", "not PEM"),
    ("HEALERT_TLS_CLIENT_CA", "missing", "no such file"),
    ("HEALERT_TLS_CLIENT_CA", "directory", "is a directory"),
    ("HEALERT_TLS_CLIENT_CA", "key", "holds a private key, not the CA certificates"),
]


def test_serve_names_the_setting_and_the_file_it_cannot_use(tmp_path: Path, pki: PKI) -> None:
    files = unusable_files(tmp_path, pki)
    good = {"HEALERT_TLS_CERT": pki.server_cert, "HEALERT_TLS_KEY": pki.server_key,
            "HEALERT_TLS_CLIENT_CA": pki.ca_file}
    runs = []
    for n, (setting, kind, said) in enumerate(UNUSABLE):
        env = {name: str(path) for name, path in {**good, setting: files[kind]}.items()}
        agent = Agent(serve_args(f"state-{n}"), tmp_path, env, log_name=f"{setting}-{kind}.log")
        runs.append((setting, kind, said, agent))  # all at once: each start takes a second
    wrong = []
    for setting, kind, said, agent in runs:
        code = agent.proc.wait(60)
        out = agent.output()
        named = f"{setting} {files[kind]}"
        if code != 2 or named not in out or said not in out or "Traceback" in out:
            wrong.append(f"{setting}={kind}: exit {code}, expected 2 naming {named!r} and "
                         f"saying {said!r}:\n{out}")
    assert wrong == [], "\n".join(wrong)
    key_text = pki.server_key.read_text().splitlines()[1]
    assert all(key_text not in agent.output() for *_, agent in runs)  # never the key itself


def test_a_renewed_certificate_that_is_garbage_is_named_and_not_loaded(
        tmp_path: Path, pki: PKI, caplog: pytest.LogCaptureFixture) -> None:
    ctx = tls.build_server_context(pki.server_cert, pki.server_key, None)
    reloader = tls.CertReloader(ctx, pki.server_cert, pki.server_key)
    pki.server_cert.write_text("garbage\n")
    assert reloader.pending() is False
    assert f"HEALERT_TLS_CERT {pki.server_cert}: is not PEM" in caplog.text
