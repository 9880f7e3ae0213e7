"""Per-run certificates for the dev cluster: a CA, the API server's serving certificate, client
certificates for each component and the admin, and the service-account token signing key.

Called by `cluster.up()` once per run (nothing is reused between runs). Keys are ECDSA P-256: fast to
generate and accepted everywhere the API server reads keys. Pure apart from `write_pki`.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Who each client certificate says it is. Kubernetes reads the user from CN and groups from O.
CLIENTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "admin": ("dynasparse-admin", ("system:masters",)),
    "controller-manager": ("system:kube-controller-manager", ()),
    "scheduler": ("system:kube-scheduler", ()),
    # The process kubelet plays many nodes at once, so it cannot use one system:node:<name> identity.
    "kubelet": ("dynasparse-process-kubelet", ("system:masters",)),
    "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", ("system:masters",)),
}

SERVER_DNS_NAMES = (
    "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)


@dataclasses.dataclass(frozen=True)
class KeyPair:
    cert_pem: bytes
    key_pem: bytes


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str, organizations: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _validity(builder: x509.CertificateBuilder, days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return builder.not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(
        now + datetime.timedelta(days=days))


def make_ca(common_name: str = "dynasparse-dev-cluster-ca", days: int = 30) -> tuple[KeyPair, object]:
    """A self-signed CA; returns its PEMs and the private key object for signing."""
    key = _key()
    name = _name(common_name)
    builder = _validity(x509.CertificateBuilder(), days).subject_name(name).issuer_name(name)
    builder = (builder.public_key(key.public_key()).serial_number(x509.random_serial_number())
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False,
                                            encipher_only=False, decipher_only=False), critical=True))
    cert = builder.sign(key, hashes.SHA256())
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)), (cert, key)


def issue(ca, common_name: str, organizations: tuple[str, ...] = (), server: bool = False,
          dns_names: tuple[str, ...] = (), ips: tuple[str, ...] = (), days: int = 30) -> KeyPair:
    """A leaf certificate signed by `ca` (the object `make_ca` returned): client, or server too."""
    ca_cert, ca_key = ca
    key = _key()
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
    builder = (_validity(x509.CertificateBuilder(), days)
               .subject_name(_name(common_name, organizations)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False))
    sans = [x509.DNSName(d) for d in dns_names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def service_account_key() -> tuple[bytes, bytes]:
    """(private PEM, public PEM) of the key the API server signs service-account tokens with."""
    key = _key()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return _key_pem(key), public


def write_pki(pki_dir: Path, service_ip: str = "10.96.0.1") -> None:
    """Write ca.{crt,key}, apiserver.{crt,key}, <client>.{crt,key}, sa.{key,pub} into `pki_dir`."""
    pki_dir.mkdir(parents=True, exist_ok=True)
    ca_pair, ca = make_ca()
    files: dict[str, bytes] = {"ca.crt": ca_pair.cert_pem, "ca.key": ca_pair.key_pem}
    server = issue(ca, "kube-apiserver", server=True, dns_names=SERVER_DNS_NAMES,
                   ips=("127.0.0.1", service_ip))
    files["apiserver.crt"], files["apiserver.key"] = server.cert_pem, server.key_pem
    for name, (cn, orgs) in CLIENTS.items():
        pair = issue(ca, cn, orgs)
        files[f"{name}.crt"], files[f"{name}.key"] = pair.cert_pem, pair.key_pem
    files["sa.key"], files["sa.pub"] = service_account_key()
    for filename, data in files.items():
        path = pki_dir / filename
        path.write_bytes(data)
        path.chmod(0o600 if filename.endswith(".key") else 0o644)
