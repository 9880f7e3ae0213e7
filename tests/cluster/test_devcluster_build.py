"""The control-plane build recipe and the certificates of each run (no build, no cluster)."""

import pytest
from cryptography import x509

from dynasparse.devcluster import binaries, pki
from dynasparse.devcluster.errors import DevClusterError


def test_the_wrapper_module_replaces_every_staging_module_with_its_release():
    go_mod = binaries.kube_go_mod("v1.34.4")
    assert "require k8s.io/kubernetes v1.34.4" in go_mod
    for module in ("api", "client-go", "kubectl", "kube-scheduler", "externaljwt"):
        assert f"k8s.io/{module} => k8s.io/{module} v0.34.4" in go_mod


def test_a_malformed_version_is_refused_with_the_expected_form():
    with pytest.raises(DevClusterError, match="v1.MINOR.PATCH"):
        binaries.staging_version("1.34")


def test_missing_binaries_say_to_run_setup(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNASPARSE_CACHE", str(tmp_path))
    with pytest.raises(DevClusterError, match="scripts/setup.sh"):
        binaries.locate()


def test_each_run_gets_a_ca_a_serving_certificate_for_loopback_and_client_identities(tmp_path):
    pki.write_pki(tmp_path)
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "apiserver.crt").read_bytes())
    admin = x509.load_pem_x509_certificate((tmp_path / "admin.crt").read_bytes())
    assert server.issuer == ca.subject
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "kubernetes.default.svc" in sans.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)][0] == "127.0.0.1"
    orgs = [a.value for a in admin.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)]
    assert orgs == ["system:masters"]
    assert oct((tmp_path / "sa.key").stat().st_mode & 0o777) == "0o600"
