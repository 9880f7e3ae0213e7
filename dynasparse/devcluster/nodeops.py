"""Act on nodes as the cloud, a termination handler or the kubelet's eviction manager would:
set a node condition, add or remove a taint, cordon, evict a pod through the eviction API.

Used by e2e scenarios (memory pressure, spot notice, drain) and by anyone poking a dev cluster.
Each helper is one API call through `rest.Api`; conditions merge by type, so the process kubelet's
heartbeats (which touch only `Ready`) never undo them.
"""

from __future__ import annotations

from dynasparse.devcluster.nodes import now_rfc3339
from dynasparse.devcluster.rest import JSON_PATCH, MERGE, Api


def set_condition(api: Api, node: str, kind: str, status: bool, reason: str = "", message: str = "") -> dict:
    """E.g. set_condition(api, "gpu-1", "MemoryPressure", True): what a kubelet under pressure posts."""
    now = now_rfc3339()
    cond = {"type": kind, "status": "True" if status else "False", "lastHeartbeatTime": now,
            "lastTransitionTime": now, "reason": reason or (f"Has{kind}" if status else f"No{kind}"),
            "message": message or f"set by dynasparse dev-cluster ({kind}={status})"}
    return api.patch(f"/api/v1/nodes/{node}/status", {"status": {"conditions": [cond]}})


def taint(api: Api, node: str, key: str, effect: str = "NoSchedule", value: str | None = None) -> dict:
    """Add (or replace) a taint, as aws-node-termination-handler does with `.../spot-itn`."""
    current = api.get(f"/api/v1/nodes/{node}")
    taints = [t for t in current["spec"].get("taints") or [] if t["key"] != key or t["effect"] != effect]
    new = {"key": key, "effect": effect, "timeAdded": now_rfc3339()}
    if value is not None:
        new["value"] = value
    ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": current["metadata"]["resourceVersion"]},
           {"op": "add", "path": "/spec/taints", "value": [*taints, new]}]
    return api.patch(f"/api/v1/nodes/{node}", ops, JSON_PATCH)


def untaint(api: Api, node: str, key: str) -> dict:
    current = api.get(f"/api/v1/nodes/{node}")
    taints = [t for t in current["spec"].get("taints") or [] if t["key"] != key]
    return api.patch(f"/api/v1/nodes/{node}", {"spec": {"taints": taints or None}}, MERGE)


def cordon(api: Api, node: str, unschedulable: bool = True) -> dict:
    return api.patch(f"/api/v1/nodes/{node}", {"spec": {"unschedulable": unschedulable or None}}, MERGE)


def evict(api: Api, namespace: str, pod: str, grace_seconds: int | None = None) -> dict:
    """Evict through the eviction API (honours PodDisruptionBudgets), as `kubectl drain` does."""
    body: dict = {"apiVersion": "policy/v1", "kind": "Eviction",
                  "metadata": {"name": pod, "namespace": namespace}}
    if grace_seconds is not None:
        body["deleteOptions"] = {"gracePeriodSeconds": grace_seconds}
    return api.post(f"/api/v1/namespaces/{namespace}/pods/{pod}/eviction", body)


def pods_on(api: Api, node: str, namespace: str | None = None) -> list[dict]:
    path = f"/api/v1/namespaces/{namespace}/pods" if namespace else "/api/v1/pods"
    return api.get(path, fieldSelector=f"spec.nodeName={node}")["items"]
