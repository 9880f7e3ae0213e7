"""Pure: the simulated nodes of a dev cluster and the API objects the kubelet writes for them.

`gpu_nodes` GPU nodes (`gpu-0`, `gpu-1`, ...; even ones spot, odd ones on-demand, each with one
`nvidia.com/gpu`) and one CPU-only node `cpu-0` for the operator. Called by the process kubelet
(registration, heartbeats, leases) and by tests that want to know which node is which.
"""

from __future__ import annotations

import dataclasses
import datetime

GPU_RESOURCE = "nvidia.com/gpu"
LEASE_NAMESPACE = "kube-node-lease"
LEASE_SECONDS = 40


@dataclasses.dataclass(frozen=True)
class NodeSpec:
    name: str
    gpus: int
    spot: bool
    cpu: str = "16"
    memory: str = "64Gi"
    pods: str = "110"
    zone: str = "dev-a"

    def labels(self) -> dict[str, str]:
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "topology.kubernetes.io/zone": self.zone,
            "node.kubernetes.io/instance-type": "dev.gpu" if self.gpus else "dev.cpu",
            "dynasparse.io/dev-cluster": "true",
        }
        capacity_type = "spot" if self.spot else "on-demand"
        labels["karpenter.sh/capacity-type"] = capacity_type
        labels["eks.amazonaws.com/capacityType"] = capacity_type.upper().replace("-", "_")
        if self.gpus:
            labels["nvidia.com/gpu.present"] = "true"
        return labels

    def resources(self) -> dict[str, str]:
        res = {"cpu": self.cpu, "memory": self.memory, "pods": self.pods, "ephemeral-storage": "100Gi"}
        if self.gpus:
            res[GPU_RESOURCE] = str(self.gpus)
        return res


def cluster_nodes(gpu_nodes: int) -> list[NodeSpec]:
    """GPU nodes alternate spot / on-demand across two zones; then one CPU node."""
    nodes = [NodeSpec(name=f"gpu-{i}", gpus=1, spot=(i % 2 == 0), zone=f"dev-{'ab'[i // 2 % 2]}")
             for i in range(gpu_nodes)]
    nodes.append(NodeSpec(name="cpu-0", gpus=0, spot=False, cpu="8", memory="32Gi"))
    return nodes


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def node_object(spec: NodeSpec) -> dict:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": spec.name, "labels": spec.labels()}}


def ready_condition(now: str, ready: bool = True) -> dict:
    return {"type": "Ready", "status": "True" if ready else "False", "lastHeartbeatTime": now,
            "reason": "KubeletReady" if ready else "KubeletNotReady",
            "message": "process kubelet is posting ready status"}


def initial_status(spec: NodeSpec, now: str) -> dict:
    """Full status at registration: resources, addresses, all conditions healthy."""
    healthy = [("MemoryPressure", "KubeletHasSufficientMemory"), ("DiskPressure", "KubeletHasNoDiskPressure"),
               ("PIDPressure", "KubeletHasSufficientPID")]
    conditions = [{"type": t, "status": "False", "reason": r, "message": "simulated",
                   "lastHeartbeatTime": now, "lastTransitionTime": now} for t, r in healthy]
    conditions.append({**ready_condition(now), "lastTransitionTime": now})
    return {"status": {
        "capacity": spec.resources(), "allocatable": spec.resources(), "conditions": conditions,
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                      {"type": "Hostname", "address": spec.name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": "v1.34.4",
                     "kubeProxyVersion": "", "containerRuntimeVersion": "process://dynasparse",
                     "kernelVersion": "", "osImage": "dynasparse process kubelet", "machineID": spec.name,
                     "systemUUID": spec.name, "bootID": spec.name},
    }}


def heartbeat_patch(now: str) -> dict:
    """Strategic merge patch touching only the Ready condition: conditions merge by `type`, so a test
    that set MemoryPressure=True keeps it."""
    return {"status": {"conditions": [ready_condition(now)]}}


def lease_object(node: str, now_us: str) -> dict:
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": node, "namespace": LEASE_NAMESPACE},
            "spec": {"holderIdentity": node, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": now_us}}
