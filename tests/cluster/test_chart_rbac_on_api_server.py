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


def test_an_operator_watching_one_namespace_reconciles_there_with_only_its_roles(dev_cluster, namespace):
    """The operator itself (run by the process kubelet with its ServiceAccount's token) creates a
    model's objects in the watched namespace and hits no RBAC denial on the way."""
    from dynasparse.devcluster.fixture import wait_until

    watched = make_namespace(dev_cluster)
    try:
        release = f"r{uuid.uuid4().hex[:6]}"
        dev_cluster.helm("install", release, str(CHART), "--namespace", namespace,
                         "--set", "operator.image.repository=dynasparse-operator",
                         "--set", f"operator.watchNamespaces={{{watched}}}",
                         "--set", "config.worker.allowedImages={example.com/not-run/*}")
        try:
            dev_cluster.api.post(f"/apis/dynasparse.io/v1alpha1/namespaces/{watched}/adaptivemodels", {
                "apiVersion": "dynasparse.io/v1alpha1", "kind": "AdaptiveModel", "metadata": {"name": "chat"},
                "spec": {"model": "default", "slo": {"ttftP95Ms": 500}, "quality": {"minBudget": 0.4},
                         "worker": {"image": "example.com/not-run/worker:1", "gpus": 0}}})
            for path in (f"/apis/apps/v1/namespaces/{watched}/deployments/chat-worker",
                         f"/api/v1/namespaces/{watched}/secrets/chat-api-key",
                         f"/apis/networking.k8s.io/v1/namespaces/{watched}/networkpolicies/chat-worker"):
                wait_until(lambda: dev_cluster.api.exists(path), 180, f"{path} made by the operator")
            wait_until(lambda: (dev_cluster.api.get(
                f"/apis/dynasparse.io/v1alpha1/namespaces/{watched}/adaptivemodels/chat").get("status") or {})
                .get("conditions"), 120, "status written by the operator's control loop")
            pods = dev_cluster.api.get(f"/api/v1/namespaces/{namespace}/pods",
                                       labelSelector="app.kubernetes.io/component=operator")["items"]
            log = dev_cluster.pod_log(namespace, pods[0]["metadata"]["name"])
            assert "forbidden" not in log.lower(), log[-3000:]
        finally:
            dev_cluster.helm("uninstall", release, "--namespace", namespace, check=False)
    finally:
        dev_cluster.api.delete(f"/api/v1/namespaces/{watched}")
