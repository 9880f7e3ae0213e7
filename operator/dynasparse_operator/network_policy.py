"""The NetworkPolicy of one AdaptiveModel's worker pods (pure; handlers.py applies it).

One policy per model, `<name>-worker` in the model's namespace, owned by the AdaptiveModel (so it
goes with it), selecting exactly that model's pods and allowing ingress only to:

* the control port (gRPC, mTLS) from the operator's pods: the operator's namespace and its pod
  labels (`networkPolicy.operatorLabels`);
* the HTTP port from `networkPolicy.httpFrom` (default: every pod of the model's own namespace).
  An empty list opens the HTTP port to nobody; only `httpFromEverywhere: true` opens it to all.

Everything else, other ports included, is denied once a policy selects the pods.
"""

from __future__ import annotations

from typing import Any

from dynasparse_operator import manifests
from dynasparse_operator.settings import NetworkPolicySettings, WorkerSettings


def name(model: str) -> str:
    return f"{model}-worker"


def network_policy(owner: manifests.Owner, worker: WorkerSettings, policy: NetworkPolicySettings,
                   operator_namespace: str) -> dict[str, Any]:
    operator_peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": operator_namespace}},
                     "podSelector": {"matchLabels": dict(policy.operator_labels)}}
    ingress: list[dict[str, Any]] = [
        {"from": [operator_peer], "ports": [{"protocol": "TCP", "port": worker.control_port}]}]
    http_port = [{"protocol": "TCP", "port": worker.http_port}]
    if policy.http_from_everywhere:
        ingress.append({"ports": http_port})  # no `from`: every source
    elif policy.http_from:
        ingress.append({"from": [dict(peer) for peer in policy.http_from], "ports": http_port})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": manifests.owned_metadata(name(owner.name), owner,
                                             {"app.kubernetes.io/component": "worker-network-policy"}),
        "spec": {"podSelector": {"matchLabels": manifests.selector(owner.name)},
                 "policyTypes": ["Ingress"], "ingress": ingress},
    }
