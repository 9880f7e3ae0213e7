"""The operator's own certificate authority and the certificates it signs (`cryptography`).

Pure: PEM bytes in, PEM bytes out. handlers.py keeps the CA in a Secret (`ca.crt`, `ca.key`; name
and namespace from settings.PkiSettings), signs each model's worker server certificate into the
worker TLS Secret (manifests.tls_secret), and signs the client certificate of this operator
process (kept in memory, never written: the operator's root filesystem is read-only; renewed by
grpc_client.ClientCertificates). Every leaf is renewed once `RENEW_AFTER` of its lifetime has
passed (`needs_renewal`), which leaves a third of it to deliver the new one. Functions that judge
or stamp validity take `now`, so tests can run months of simulated time.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_COMMON_NAME = "dynasparse operator CA"
OPERATOR_COMMON_NAME = "dynasparse-operator"


@dataclasses.dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, PEM."""

    cert_pem: bytes
    key_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)


RENEW_AFTER = 2 / 3
"""Fraction of a certificate's lifetime after which it is renewed."""
MAX_BACKDATE = dt.timedelta(minutes=5)
"""Leaves are valid from a little before they are issued (clock skew between pods)."""


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dynasparse"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(days: int = 3650) -> KeyPair:
    """A new self-signed CA (EC P-256)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = utc_now()
    cert = (x509.CertificateBuilder()
            .subject_name(_name(CA_COMMON_NAME)).issuer_name(_name(CA_COMMON_NAME))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue(ca: KeyPair, common_name: str, *, server: bool, dns_names: tuple[str, ...] = (),
          days: float = 365, now: dt.datetime | None = None) -> KeyPair:
    """A leaf certificate signed by `ca`: a server certificate for workers, a client one for us."""
    ca_cert = ca.certificate
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = now or utc_now()
    lifetime = dt.timedelta(days=days)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (x509.CertificateBuilder()
               .subject_name(_name(common_name)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - min(MAX_BACKDATE, lifetime / 4))
               .not_valid_after(min(now + lifetime, ca_cert.not_valid_after_utc))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    if dns_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(d) for d in dns_names]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def renewal_due_at(cert_pem: bytes) -> dt.datetime | None:
    """When the certificate should be renewed (RENEW_AFTER of its validity); None if unreadable."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        return None
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return start + (end - start) * RENEW_AFTER


def needs_renewal(cert_pem: bytes, *, now: dt.datetime | None = None) -> bool:
    """True once RENEW_AFTER of the certificate's lifetime has passed (or it cannot be read)."""
    due = renewal_due_at(cert_pem)
    return due is None or (now or utc_now()) >= due


def signed_by(cert_pem: bytes, ca: KeyPair) -> bool:
    """True when `cert_pem` was issued by this CA (a rotated CA means reissue the leaf)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        cert.verify_directly_issued_by(ca.certificate)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False
