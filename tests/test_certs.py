"""Runs certs/gen-certs.sh and checks the PKI it writes with openssl itself."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "certs" / "gen-certs.sh"
SANS = ("DNS:healert-webhook.healert-system.svc", "DNS:healert-webhook", "IP:127.0.0.1",
        "IP:10.96.0.50")
KUBECONFIGS = sorted((REPO / "manifests" / "apiserver").glob("audit-webhook-kubeconfig-*.yaml"))

pytestmark = pytest.mark.skipif(
    shutil.which("openssl") is None or shutil.which("bash") is None,
    reason="openssl (and bash) are needed to generate certificates",
)


def run(*argv: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing text output."""
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=60, check=check
    )


def generate(out: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run gen-certs.sh into `out` with the test SANs."""
    args: list[str] = ["--out", str(out)]
    for san in SANS:
        args += ["--san", san]
    return run("bash", SCRIPT, *args, *extra, check=check)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The certificates certs/gen-certs.sh writes, once for the module."""
    out = tmp_path_factory.mktemp("pki") / "out"
    result = generate(out)
    assert "server.crt" in result.stdout
    return out


def x509_ext(cert: Path, name: str) -> str:
    """One X.509 extension of a certificate, as openssl prints it."""
    return run("openssl", "x509", "-noout", "-in", cert, "-ext", name).stdout


def test_certificates_chain_to_the_ca(certs: Path) -> None:
    for leaf in ("server.crt", "apiserver-client.crt"):
        result = run("openssl", "verify", "-CAfile", certs / "ca.crt", certs / leaf, check=False)
        assert result.returncode == 0 and ": OK" in result.stdout, result.stdout + result.stderr


def test_purposes_match_roles(certs: Path) -> None:
    ca = certs / "ca.crt"
    server = run(
        "openssl", "verify", "-purpose", "sslserver", "-CAfile", ca, certs / "server.crt",
        check=False)
    assert server.returncode == 0, server.stderr
    client = run(
        "openssl",
        "verify",
        "-purpose",
        "sslclient",
        "-CAfile",
        ca,
        certs / "apiserver-client.crt",
        check=False,
    )
    assert client.returncode == 0, client.stderr
    assert "CA:TRUE" in x509_ext(ca, "basicConstraints")


def test_server_carries_every_san(certs: Path) -> None:
    text = x509_ext(certs / "server.crt", "subjectAltName")
    assert "DNS:healert-webhook.healert-system.svc" in text
    assert "DNS:healert-webhook" in text
    assert "IP Address:10.96.0.50" in text
    assert "IP Address:127.0.0.1" in text


def test_the_documented_certificate_fits_every_shipped_kubeconfig(tmp_path: Path) -> None:
    """A certificate made as certs/README.md shows is valid for the name or address
    every shipped webhook kubeconfig checks (node-local loopback and Service alike)."""
    readme = (REPO / "certs" / "README.md").read_text(encoding="utf-8")
    example = next(b for b in re.findall(r"```sh\n(.*?)```", readme, re.S) if "--san" in b)
    sans = re.findall(r"--san (\S+)", example)
    assert len(sans) >= 3, example
    args: list[str] = ["--out", str(tmp_path / "pki")]
    for san in sans:
        args += ["--san", san]
    run("bash", SCRIPT, *args)
    text = x509_ext(tmp_path / "pki" / "server.crt", "subjectAltName")
    assert len(KUBECONFIGS) == 3
    for path in KUBECONFIGS:
        cluster = yaml.safe_load(path.read_text(encoding="utf-8"))["clusters"][0]["cluster"]
        assert f"DNS:{cluster['tls-server-name']}" in text, path.name
        host = urlsplit(cluster["server"]).hostname
        assert f"IP Address:{host}" in text, f"{path.name}: {host} for tools without SNI"


def test_client_names_the_apiserver(certs: Path) -> None:
    subject = run(
        "openssl", "x509", "-noout", "-subject", "-in", certs / "apiserver-client.crt"
    ).stdout
    assert "kube-apiserver-audit" in subject
    assert "DNS:kube-apiserver-audit" in x509_ext(certs / "apiserver-client.crt", "subjectAltName")


def test_keys_are_private(certs: Path) -> None:
    for key in ("ca.key", "server.key", "apiserver-client.key"):
        assert stat.S_IMODE((certs / key).stat().st_mode) == 0o600, key
    assert stat.S_IMODE(certs.stat().st_mode) == 0o700


def test_rerun_keeps_the_ca_and_protects_leaves(certs: Path) -> None:
    ca_before = (certs / "ca.crt").read_bytes()
    refused = generate(certs, check=False)
    assert refused.returncode != 0 and "--force" in refused.stderr
    renewed = generate(certs, "--force", "--key-type", "rsa")
    assert "reused" in renewed.stdout
    assert (certs / "ca.crt").read_bytes() == ca_before
    verify = run("openssl", "verify", "-CAfile", certs / "ca.crt", certs / "server.crt",
                 check=False)
    assert verify.returncode == 0


@pytest.mark.parametrize("bad", [["--san", "example.com"], ["--san", "URI:x"], []])
def test_rejects_bad_arguments(tmp_path: Path, bad: list[str]) -> None:
    result = run("bash", SCRIPT, "--out", tmp_path / "x", *bad, check=False)
    assert result.returncode == 2
    assert not (tmp_path / "x" / "server.key").exists()
