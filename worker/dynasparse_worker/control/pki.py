"""Development PKI for the control channel: a CA, a server certificate and a client certificate.

Pure functions that return PEM bytes, so tests can mint certificates in memory and
`dynasparse dev-certs` (commands/dev_certs.py) can write them to a directory that
`dynasparse serve --tls-dir` reads. Production pods get theirs from the operator's Secret instead.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

FILE_NAMES = ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, both PEM."""

    cert_pem: bytes
    key_pem: bytes


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dynasparse-dev"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _validity(days: int) -> tuple[dt.datetime, dt.datetime]:
    now = dt.datetime.now(dt.timezone.utc)
    return now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)


def make_ca(common_name: str = "dynasparse dev CA", days: int = 365) -> Issued:
    """A self-signed CA that may sign leaf certificates only (path length 0)."""
    key = _new_key()
    not_before, not_after = _validity(days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue_leaf(ca: Issued, common_name: str, *, server: bool, dns_names: tuple[str, ...] = (),
               ip_addresses: tuple[str, ...] = (), days: int = 365) -> Issued:
    """A leaf certificate signed by `ca`, for TLS server auth (`server=True`) or client auth."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    key = _new_key()
    not_before, not_after = _validity(days)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False
        )
    )
    alt_names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def make_dev_bundle(dns_names: tuple[str, ...] = ("localhost",),
                    ip_addresses: tuple[str, ...] = ("127.0.0.1",)) -> dict[str, bytes]:
    """All five files of a development bundle, by file name (see FILE_NAMES)."""
    ca = make_ca()
    server = issue_leaf(ca, dns_names[0] if dns_names else "worker", server=True,
                        dns_names=dns_names, ip_addresses=ip_addresses)
    client = issue_leaf(ca, "dynasparse-operator", server=False)
    return {
        "ca.crt": ca.cert_pem,
        "server.crt": server.cert_pem,
        "server.key": server.key_pem,
        "client.crt": client.cert_pem,
        "client.key": client.key_pem,
    }


def write_bundle(bundle: dict[str, bytes], out_dir: Path) -> list[Path]:
    """Write the bundle's files into `out_dir` (created), keys readable by the owner only."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in bundle.items():
        path = out_dir / name
        path.write_bytes(data)
        if name.endswith(".key"):
            path.chmod(0o600)
        written.append(path)
    return written


def pair_matches(cert_pem: bytes, key_pem: bytes) -> bool:
    """True when `key_pem` is the private key of the certificate in `cert_pem` (both readable), so
    a Secret caught half-updated (new certificate, old key) is never served."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        return False
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return (cert.public_key().public_bytes(serialization.Encoding.DER, spki)
            == key.public_key().public_bytes(serialization.Encoding.DER, spki))
