"""The chart's RBAC as the real API server evaluates it (`kubectl auth can-i --as` the operator's
ServiceAccount after `helm install`): what the operator reconciles is granted, Secrets are never
listed or watched anywhere, and with `operator.watchNamespaces` nothing namespaced is granted
outside those namespaces. The operator image is one the process kubelet does not run, so only the
objects matter here (scenario 1 of e2e/ runs the operator itself)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster
CHART = Path(__file__).resolve().parents[2] / "charts" / "dynasparse"


def make_namespace(cluster) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.api.post("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


@pytest.fixture
def install(dev_cluster):
    releases = []

    def install(release: str, namespace: str, *values: str) -> str:
        dev_cluster.helm("install", release, str(CHART), "--namespace", namespace,
                         "--set", "operator.image.repository=example.com/not-run/operator", *values)
        releases.append((release, namespace))
        return f"system:serviceaccount:{namespace}:{release}-dynasparse-operator"
    yield install
    for release, namespace in releases:
        dev_cluster.helm("uninstall", release, "--namespace", namespace, check=False)


def can(cluster, who: str, verb: str, resource: str, *where: str) -> bool:
    answer = cluster.kubectl("auth", "can-i", verb, resource, *where, "--as", who, check=False).stdout.strip()
    assert answer in ("yes", "no"), answer
    return answer == "yes"


def test_the_operator_may_not_list_secrets_anywhere_nor_delete_what_it_owns(dev_cluster, namespace, install):
    who = install(f"r{uuid.uuid4().hex[:6]}", namespace)
    assert not can(dev_cluster, who, "list", "secrets", "-A")
    assert not can(dev_cluster, who, "watch", "secrets", "-A")
    assert not can(dev_cluster, who, "list", "secrets", "-n", namespace)
    assert not can(dev_cluster, who, "delete", "secrets", "-A")
    assert not can(dev_cluster, who, "delete", "deployments.apps", "-A")
    assert not can(dev_cluster, who, "delete", "services", "-A")
    assert can(dev_cluster, who, "get", "secret/dynasparse-ca", "-n", namespace)
    assert can(dev_cluster, who, "create", "secrets", "-n", "default")  # TLS and API-key Secrets
    assert can(dev_cluster, who, "create", "networkpolicies.networking.k8s.io", "-n", "default")
    assert can(dev_cluster, who, "patch", "deployments.apps", "-n", "default")


def test_watching_named_namespaces_grants_nothing_namespaced_elsewhere(dev_cluster, namespace, install):
    watched = make_namespace(dev_cluster)
    try:
        who = install(f"r{uuid.uuid4().hex[:6]}", namespace, "--set", f"operator.watchNamespaces={{{watched}}}")
        assert can(dev_cluster, who, "create", "deployments.apps", "-n", watched)
        assert can(dev_cluster, who, "watch", "adaptivemodels.dynasparse.io", "-n", watched)
        assert can(dev_cluster, who, "get", "secrets", "-n", watched)  # the worker TLS Secret
        for verb, resource in [("create", "deployments.apps"), ("watch", "adaptivemodels.dynasparse.io"),
                               ("get", "secrets"), ("list", "pods")]:
            assert not can(dev_cluster, who, verb, resource, "-n", "default"), (verb, resource)
        assert not can(dev_cluster, who, "list", "secrets", "-A")
        assert not can(dev_cluster, who, "list", "secrets", "-n", watched)
        # its own namespace: the CA by name, no other Secret
        assert can(dev_cluster, who, "get", "secret/dynasparse-ca", "-n", namespace)
        assert not can(dev_cluster, who, "get", "secret/someone-elses", "-n", namespace)
        assert can(dev_cluster, who, "list", "nodes")  # cluster-scoped signals stay cluster-wide
    finally:
        dev_cluster.api.delete(f"/api/v1/namespaces/{watched}")
