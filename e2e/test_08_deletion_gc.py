"""Scenario 8: deleting an AdaptiveModel removes every object it owned (owner references and the
real garbage collector, not the operator's own clean-up)."""

from __future__ import annotations

import yaml
from e2e_support import needs

from dynasparse.devcluster.fixture import wait_until

SPEC = {"model": "default", "replicas": 1, "slo": {"ttftP95Ms": 2000}, "quality": {"maxLoss": 0.5}}
OWNED_KINDS = ("deployments.apps", "services", "secrets", "networkpolicies.networking.k8s.io",
               "replicasets.apps", "pods")


def owned_by(cluster, namespace: str, uid: str) -> list[str]:
    """kind/name of everything in `namespace` whose ownership chain leads to `uid`."""
    out = cluster.kubectl("get", ",".join(OWNED_KINDS), "-n", namespace, "-o", "json").stdout
    items = yaml.safe_load(out)["items"]
    by_uid = {i["metadata"]["uid"]: i for i in items}

    def leads_to_uid(item, depth=0) -> bool:
        for ref in item["metadata"].get("ownerReferences") or []:
            if ref["uid"] == uid or (ref["uid"] in by_uid and depth < 4 and leads_to_uid(by_uid[ref["uid"]], depth + 1)):
                return True
        return False

    return [f"{i['kind']}/{i['metadata']['name']}" for i in items if leads_to_uid(i)]


def test_deleting_an_adaptive_model_garbage_collects_what_it_owned(operator_running, namespace):
    needs("dynasparse_operator.manifests", "the operator's manifest rendering")
    cluster = operator_running
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(
        {"apiVersion": "dynasparse.io/v1alpha1", "kind": "AdaptiveModel", "metadata": {"name": "gc"},
         "spec": SPEC}))
    am = cluster.api.get(f"/apis/dynasparse.io/v1alpha1/namespaces/{namespace}/adaptivemodels/gc")
    owned = wait_until(lambda: [o for o in owned_by(cluster, namespace, am["metadata"]["uid"])
                                if o.startswith(("Deployment/", "Service/"))], 60,
                       "the operator to create the workers' Deployment and Service")
    assert any(o.startswith("Deployment/") for o in owned) or owned
    cluster.kubectl("delete", "adaptivemodel", "gc", "-n", namespace, "--wait=true", timeout=120)
    wait_until(lambda: not owned_by(cluster, namespace, am["metadata"]["uid"]), 90,
               "every object owned by the AdaptiveModel to be garbage-collected")
