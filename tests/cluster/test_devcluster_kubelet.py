"""The dev cluster end to end: real API server, scheduler and controllers, and the process kubelet
running a pod of "our" image as a local process (here Python's own http.server)."""

from __future__ import annotations

import urllib.request

import pytest

from dynasparse.devcluster import nodeops
from dynasparse.devcluster.fixture import wait_until

pytestmark = pytest.mark.cluster


def web_pod(name: str, node: str | None = None, grace: int = 5) -> dict:
    spec = {
        "terminationGracePeriodSeconds": grace,
        "containers": [{
            "name": "web", "image": "dynasparse-test:dev",
            "command": ["python", "-m", "http.server", "--bind", "$(POD_IP)", "--directory", "/data", "8080"],
            "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/hello.txt", "port": "http"}, "periodSeconds": 1},
            "volumeMounts": [{"name": "web", "mountPath": "/data"}],
        }],
        "volumes": [{"name": "web", "configMap": {"name": "web"}}],
    }
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "web"}}, "spec": spec}


def get_pod(cluster, namespace, name):
    return cluster.api.get(f"/api/v1/namespaces/{namespace}/pods/{name}")


def is_ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])


def gone(cluster, namespace, name) -> bool:
    return not cluster.api.exists(f"/api/v1/namespaces/{namespace}/pods/{name}")


@pytest.fixture
def web_config(dev_cluster, namespace):
    dev_cluster.api.post(f"/api/v1/namespaces/{namespace}/configmaps",
                         {"metadata": {"name": "web"}, "data": {"hello.txt": "hello from a configmap\n"}})
    return namespace


def test_nodes_are_registered_ready_with_gpus_and_spot_labels(dev_cluster):
    nodes = {n["metadata"]["name"]: n for n in dev_cluster.api.get("/api/v1/nodes")["items"]}
    assert {"gpu-0", "gpu-1", "cpu-0"} <= set(nodes)
    assert nodes["gpu-0"]["status"]["allocatable"]["nvidia.com/gpu"] == "1"
    assert nodes["gpu-0"]["metadata"]["labels"]["karpenter.sh/capacity-type"] == "spot"
    assert nodes["gpu-1"]["metadata"]["labels"]["karpenter.sh/capacity-type"] == "on-demand"
    assert "nvidia.com/gpu" not in nodes["cpu-0"]["status"]["allocatable"]
    lease = dev_cluster.api.get("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/gpu-0")
    assert lease["spec"]["holderIdentity"] == "gpu-0"


def test_a_pod_of_our_image_runs_as_a_process_on_its_own_loopback_address(dev_cluster, web_config):
    ns = web_config
    dev_cluster.api.post(f"/api/v1/namespaces/{ns}/pods", web_pod("web"))
    pod = wait_until(lambda: (p := get_pod(dev_cluster, ns, "web")) and is_ready(p) and p, 30,
                     "the web pod to be scheduled, started and Ready")
    ip = pod["status"]["podIP"]
    assert ip.startswith(f"127.{dev_cluster.config.pod_subnet}.")
    assert pod["spec"]["nodeName"]  # placed by the real scheduler
    with urllib.request.urlopen(f"http://{ip}:8080/hello.txt", timeout=5) as resp:
        assert resp.read() == b"hello from a configmap\n"  # the mounted ConfigMap, served at the pod IP


def test_deleting_a_pod_stops_its_process_within_the_grace_period(dev_cluster, web_config):
    ns = web_config
    dev_cluster.api.post(f"/api/v1/namespaces/{ns}/pods", web_pod("doomed"))
    pod = wait_until(lambda: (p := get_pod(dev_cluster, ns, "doomed")) and is_ready(p) and p, 30, "Ready")
    dev_cluster.api.delete(f"/api/v1/namespaces/{ns}/pods/doomed")
    wait_until(lambda: gone(dev_cluster, ns, "doomed"), 10, "the pod to be terminated and removed")
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{pod['status']['podIP']}:8080/hello.txt", timeout=2)


def test_a_pod_that_cannot_mount_its_configmap_waits_until_it_exists(dev_cluster, namespace):
    dev_cluster.api.post(f"/api/v1/namespaces/{namespace}/pods", web_pod("early"))
    waiting = wait_until(
        lambda: [s for s in get_pod(dev_cluster, namespace, "early")["status"].get("containerStatuses") or []
                 if "not found" in s["state"].get("waiting", {}).get("message", "")], 20,
        "the pod to report that its ConfigMap is missing")
    assert waiting[0]["state"]["waiting"]["reason"] == "ContainerCreating"
    dev_cluster.api.post(f"/api/v1/namespaces/{namespace}/configmaps",
                         {"metadata": {"name": "web"}, "data": {"hello.txt": "late\n"}})
    wait_until(lambda: is_ready(get_pod(dev_cluster, namespace, "early")), 30, "the pod to start once it can")


def test_a_noexecute_spot_notice_taint_evicts_pods_through_the_real_taint_manager(dev_cluster, web_config):
    ns = web_config
    dev_cluster.api.post(f"/api/v1/namespaces/{ns}/pods", web_pod("on-spot", node="gpu-2"))
    wait_until(lambda: is_ready(get_pod(dev_cluster, ns, "on-spot")), 30, "the pod on gpu-2 to be Ready")
    try:
        nodeops.taint(dev_cluster.api, "gpu-2", "aws-node-termination-handler/spot-itn", "NoExecute")
        wait_until(lambda: gone(dev_cluster, ns, "on-spot"), 30, "the taint manager to evict the pod")
    finally:
        nodeops.untaint(dev_cluster.api, "gpu-2", "aws-node-termination-handler/spot-itn")


def test_memory_pressure_on_a_node_is_kept_and_tainted_by_the_node_lifecycle_controller(dev_cluster):
    nodeops.set_condition(dev_cluster.api, "gpu-3", "MemoryPressure", True)
    try:
        wait_until(lambda: any(t["key"] == "node.kubernetes.io/memory-pressure"
                               for t in dev_cluster.api.get("/api/v1/nodes/gpu-3")["spec"].get("taints") or []),
                   30, "the node lifecycle controller to taint gpu-3 for memory pressure")
        node = dev_cluster.api.get("/api/v1/nodes/gpu-3")
        conditions = {c["type"]: c["status"] for c in node["status"]["conditions"]}
        assert conditions == {**conditions, "MemoryPressure": "True", "Ready": "True"}
    finally:
        nodeops.set_condition(dev_cluster.api, "gpu-3", "MemoryPressure", False)


def test_pods_of_other_images_are_reported_running_without_a_process(dev_cluster, namespace):
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "nginx"},
           "spec": {"containers": [{"name": "nginx", "image": "nginx:1.27"}]}}
    dev_cluster.api.post(f"/api/v1/namespaces/{namespace}/pods", pod)
    wait_until(lambda: is_ready(get_pod(dev_cluster, namespace, "nginx")), 20, "the foreign pod to be Ready")


def test_a_deployment_whose_container_cannot_start_keeps_one_pod_in_crash_loop_back_off(dev_cluster,
                                                                                       namespace):
    labels = {"app": "broken"}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "broken"},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                "name": "c", "image": "dynasparse-test:dev",
                "command": ["/nonexistent/venv/bin/server"]}]}}},
    }
    dev_cluster.api.post(f"/apis/apps/v1/namespaces/{namespace}/deployments", deployment)

    def pods():
        return dev_cluster.api.get(f"/api/v1/namespaces/{namespace}/pods",
                                   labelSelector="app=broken")["items"]

    def restarted(pod):
        status = (pod["status"].get("containerStatuses") or [{}])[0]
        return status.get("restartCount", 0) >= 1 and pod

    first = wait_until(lambda: (p := pods()) and restarted(p[0]), 40,
                       "the container to fail to start and be restarted after its 10 s back-off")
    status = first["status"]["containerStatuses"][0]
    assert first["status"]["phase"] == "Running"
    assert status["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert "back-off 20s" in status["state"]["waiting"]["message"]
    assert status["lastState"]["terminated"]["reason"] == "StartError"
    names = {p["metadata"]["name"] for p in pods()}
    assert names == {first["metadata"]["name"]}, "the ReplicaSet kept its pod instead of replacing it"
