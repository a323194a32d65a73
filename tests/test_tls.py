"""TLS on the webhook listener: who may connect, old versions, certificates renewed in place.

Real handshakes against the in-process server (tests/support/webhooks.py), with certificates
the test makes.
"""

from __future__ import annotations

import datetime
import os
import ssl
from pathlib import Path

import httpx
import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from healert_webhook import tls
from healert_webhook.ops import Health
from healert_webhook.outbox import Outbox

from support.agent import Agent, serve_args
from support.events import event_list, exec_event
from support.pki import (
    PKI,
    client_context,
    handshake_error,
    server_common_name,
)
from support.servers import sample, wait_for
from support.webhooks import JSON, queued, webhook


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


# -- what a serving certificate is good for, and which replacements are refused ----------

NOW = datetime.datetime(2026, 11, 26, 10, 0, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)


def install(pki: PKI, *names: str, common_name: str = "healert-webhook-n",
            not_before: datetime.datetime = NOW - 30 * DAY,
            not_after: datetime.datetime = NOW + 60 * DAY) -> trustme.LeafCert:
    """Write a new server certificate and key over the pair in use (as cert-manager does)."""
    leaf = pki.ca.issue_cert(*(names or ("127.0.0.1", "localhost")), common_name=common_name,
                             not_before=not_before.replace(tzinfo=None),
                             not_after=not_after.replace(tzinfo=None))
    leaf.private_key_pem.write_to_path(str(pki.server_key))
    leaf.cert_chain_pems[0].write_to_path(str(pki.server_cert))
    return leaf


def cn_only_certificate(pki: PKI) -> bytes:
    """A certificate with a subject CN and no subjectAltName (trustme always adds one)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Legacy.Example")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(7)
            .not_valid_before(NOW - DAY).not_valid_after(NOW + DAY)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize("case", ["names", "utc_time", "generalized_time", "cn_only"])
def test_the_serving_certificate_is_read_as_cryptography_reads_it(pki: PKI, case: str) -> None:
    from cryptography import x509

    if case == "cn_only":
        pem = cn_only_certificate(pki)
        want_names = {"legacy.example"}
    else:
        names = ("127.0.0.1", "::1", "Healert.Example", "*.svc.example") if case == "names" \
            else ("a.example",)
        after = {"utc_time": NOW + DAY, "generalized_time": NOW.replace(year=2051)}.get(
            case, NOW + 90 * DAY)
        pem = install(pki, *names, not_after=after).cert_chain_pems[0].bytes()
        want_names = {"127.0.0.1", "::1", "healert.example", "*.svc.example"} \
            if case == "names" else {"a.example"}
    seen = tls.serving_cert("HEALERT_TLS_CERT", pki.server_cert, pem + pki.ca.cert_pem.bytes())
    cert = x509.load_pem_x509_certificate(pem)
    assert seen.names == want_names
    assert seen.not_before == cert.not_valid_before_utc
    assert seen.not_after == cert.not_valid_after_utc


def test_names_are_shared_exactly_or_through_a_wildcard() -> None:
    def cert(*names: str) -> tls.ServingCert:
        return tls.ServingCert(NOW, NOW, frozenset(names))

    assert cert("a.example", "10.0.0.1").shares_a_name(cert("10.0.0.1"))
    assert cert("*.svc.example").shares_a_name(cert("healert.svc.example"))
    assert cert("healert.svc.example").shares_a_name(cert("*.svc.example"))
    assert not cert("*.svc.example").shares_a_name(cert("a.b.svc.example"))
    assert not cert("healert.example").shares_a_name(cert("other.example", "10.0.0.1"))


class Clock:
    def __init__(self, now: datetime.datetime) -> None:
        self.now = now.timestamp()

    def __call__(self) -> float:
        return self.now


def test_a_replacement_no_client_would_take_is_refused_once_and_the_one_in_use_kept(
        pki: PKI, caplog: pytest.LogCaptureFixture) -> None:
    install(pki, common_name="in-use")
    ctx = tls.build_server_context(pki.server_cert, pki.server_key, None)
    clock = Clock(NOW)
    reloader = tls.CertReloader(ctx, pki.server_cert, pki.server_key, clock=clock)
    in_use = reloader.current
    assert sample("healert_tls_certificate_expiry_timestamp_seconds") == \
        (NOW + 60 * DAY).timestamp()
    refused = sample("healert_tls_certificate_reloads_total", result="refused")
    cases = [  # (the replacement, what the one log line about it says)
        ({"not_after": NOW - DAY}, "expired at 2026-11-25T10:00:00Z"),
        ({"not_before": NOW + DAY}, "not valid until 2026-11-27T10:00:00Z"),
        ({"names": ("other.example", "10.9.9.9")}, "share none with the certificate in use"),
    ]
    for n, (kind, said) in enumerate(cases, 1):
        caplog.clear()
        names = kind.pop("names", ())
        install(pki, *names, **kind)  # type: ignore[arg-type]
        for _ in range(5):  # polled every second: logged once, not once a poll
            assert reloader.pending() is False
        lines = [r.getMessage() for r in caplog.records if "not used" in r.getMessage()]
        assert len(lines) == 1 and said in lines[0], lines
        assert reloader.current == in_use
        assert sample("healert_tls_certificate_reloads_total", result="refused") == refused + n
    # the not-yet-valid one again: loaded once this node's clock reaches its start
    install(pki, not_before=NOW + DAY, common_name="early")
    assert reloader.pending() is False
    clock.now += 2 * DAY.total_seconds()
    assert reloader.pending() is True and reloader.apply() is True
    assert reloader.current.not_before == NOW + DAY
    assert sample("healert_tls_certificate_expiry_timestamp_seconds") == \
        (NOW + 60 * DAY).timestamp()


def test_an_expired_certificate_in_use_makes_the_agent_unready(
        pki: PKI, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    install(pki, not_after=NOW + DAY)
    ctx = tls.build_server_context(pki.server_cert, pki.server_key, None)
    clock = Clock(NOW)
    reloader = tls.CertReloader(ctx, pki.server_cert, pki.server_key, clock=clock)
    health = Health(outbox=Outbox(tmp_path / "outbox.db"), certificate=reloader)
    assert health.problems() == []
    clock.now += 2 * DAY.total_seconds()  # it lapses while in use
    assert health.problems() == ["serving certificate expired at 2026-11-27T10:00:00Z"]
    caplog.clear()
    tls.CertReloader(ctx, pki.server_cert, pki.server_key, clock=clock)  # a start with it
    assert "expired at 2026-11-27T10:00:00Z: every TLS handshake fails" in caplog.text


def test_a_fifo_where_the_certificate_was_is_refused_at_once(pki: PKI, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.pem"
    os.mkfifo(fifo)
    with pytest.raises(tls.TLSConfigError, match=r"fifo\.pem: is a FIFO \(named pipe\), not a "
                                                 r"PEM file"):
        tls.build_server_context(fifo, pki.server_key, None)
