"""Certificates and keys for a throwaway control plane on loopback.

Three CAs, so that no certificate can be used where it was not meant to be:
the cluster CA signs the apiserver's serving certificate, the client CA signs the people's
client certificates (CN = user name, O = groups, as the apiserver reads them), and the
webhook CA signs the agent's serving certificate and the apiserver's client certificate for
the audit webhook (mTLS). The service-account key pair signs and verifies tokens.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = dt.timedelta(days=2)


@dataclass(frozen=True)
class Pair:
    """A certificate and its key, written as PEM files."""

    cert: Path
    key: Path


@dataclass
class _Authority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    files: Pair


def _name(common_name: str, orgs: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in orgs]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    path.touch(mode=0o600)
    path.write_bytes(data)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _builder(subject: x509.Name, issuer: x509.Name,
             public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + _VALIDITY))


def new_authority(folder: Path, stem: str, common_name: str) -> _Authority:
    """A self-signed CA written to `folder/stem.crt` and `folder/stem.key`."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(common_name)
    cert = (_builder(subject, subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    files = Pair(folder / f"{stem}.crt", folder / f"{stem}.key")
    _write_cert(files.cert, cert)
    _write_key(files.key, key)
    return _Authority(cert, key, files)


def issue(ca: _Authority, folder: Path, stem: str, common_name: str, *,
          orgs: tuple[str, ...] = (), server: bool = False, client: bool = False,
          dns: tuple[str, ...] = (), ips: tuple[str, ...] = ()) -> Pair:
    """A leaf certificate signed by `ca`, for serving, client authentication or both."""
    key = ec.generate_private_key(ec.SECP256R1())
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + \
        ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    builder = (_builder(_name(common_name, orgs), ca.cert.subject, key.public_key())
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False))
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    pair = Pair(folder / f"{stem}.crt", folder / f"{stem}.key")
    _write_cert(pair.cert, cert)
    _write_key(pair.key, key)
    return pair


def service_account_keys(folder: Path) -> Pair:
    """An RSA key pair for signing service-account tokens (`sa.pub` is the "cert")."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    pair = Pair(folder / "sa.pub", folder / "sa.key")
    pair.cert.write_bytes(public)
    _write_key(pair.key, key)
    return pair
