"""Scenario 1: `helm install` into the dev cluster; the operator pod runs through the process kubelet
with the chart's ServiceAccount token, so a missing RBAC rule fails here."""

from __future__ import annotations

import yaml

from e2e_support import OPERATOR_SA, RELEASE, RELEASE_NAMESPACE, operator_pod
from dynasparse.devcluster.rest import Api


def test_the_chart_installs_its_crd_and_every_object_on_a_real_api_server(chart_installed):
    status = chart_installed.helm("status", RELEASE, "-n", RELEASE_NAMESPACE, "-o", "json").stdout
    assert '"status":"deployed"' in status.replace(" ", "")
    notes = chart_installed.helm("status", RELEASE, "-n", RELEASE_NAMESPACE).stdout
    assert "kubectl get am" in notes  # NOTES.txt tells the user how to see their models
    crd = chart_installed.api.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
                                  "adaptivemodels.dynasparse.io")
    assert any(c["type"] == "Established" and c["status"] == "True" for c in crd["status"]["conditions"])
    names = chart_installed.kubectl("get", "deploy,sa,cm,networkpolicy,svc", "-n", RELEASE_NAMESPACE,
                                    "-o", "name").stdout.split()
    assert f"deployment.apps/{RELEASE}-operator" in names
    assert f"serviceaccount/{OPERATOR_SA}" in names
    assert f"configmap/{RELEASE}-operator-config" in names


def test_rbac_grants_the_operator_what_it_reconciles_and_not_pod_deletion(chart_installed):
    who = f"system:serviceaccount:{RELEASE_NAMESPACE}:{OPERATOR_SA}"

    def can(verb: str, resource: str, ns: str = "default") -> bool:
        resource, _, sub = resource.partition("/")
        args = ["auth", "can-i", verb, resource, "-n", ns, "--as", who] + ([f"--subresource={sub}"] if sub else [])
        return chart_installed.kubectl(*args, check=False).stdout.strip() == "yes"

    for verb, resource in [("watch", "adaptivemodels.dynasparse.io"), ("patch", "adaptivemodels.dynasparse.io/status"),
                           ("create", "deployments.apps"), ("create", "services"), ("create", "secrets"),
                           ("list", "pods"), ("list", "nodes"), ("create", "events"),
                           ("list", "customresourcedefinitions.apiextensions.k8s.io")]:
        assert can(verb, resource), f"the chart's RBAC does not let the operator {verb} {resource}"
    for verb, resource in [("delete", "pods"), ("create", "pods/eviction"), ("delete", "nodes"),
                           ("patch", "nodes"), ("create", "clusterrolebindings.rbac.authorization.k8s.io")]:
        assert not can(verb, resource), f"the chart's RBAC lets the operator {verb} {resource}"


def test_the_operator_pod_runs_with_the_charts_service_account_token(operator_running):
    cluster = operator_running
    pod = operator_pod(cluster)
    assert pod["spec"]["serviceAccountName"] == OPERATOR_SA
    assert pod["status"]["podIP"].startswith(f"127.{cluster.config.pod_subnet}.")
    assert pod["spec"]["nodeName"] in {"cpu-0", *(f"gpu-{i}" for i in range(8))}
    # The token the process got authenticates as the chart's ServiceAccount, nothing else.
    pod_dir = next((cluster.config.root / "pods").glob(f"{RELEASE_NAMESPACE}_{pod['metadata']['name']}_*"))
    kubeconfig = yaml.safe_load((pod_dir / "kubeconfig").read_text())
    token = kubeconfig["users"][0]["user"]["token"]
    as_pod = Api(cluster.config.server, cluster.config.pki / "ca.crt", token=token)
    review = as_pod.post("/apis/authentication.k8s.io/v1/selfsubjectreviews",
                         {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    assert review["status"]["userInfo"]["username"] == f"system:serviceaccount:{RELEASE_NAMESPACE}:{OPERATOR_SA}"
    log = cluster.pod_log(RELEASE_NAMESPACE, pod["metadata"]["name"])
    assert "forbidden" not in log.lower(), f"the operator hit an RBAC denial:\n{log[-3000:]}"
