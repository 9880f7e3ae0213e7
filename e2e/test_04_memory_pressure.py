"""Scenario 4: MemoryPressure on one node lowers the ceiling of the worker pod on it, visible in the
AdaptiveModel's status and events."""

from __future__ import annotations

from e2e_support import apply_model, events_for, model_status, needs, ready_worker_pods

from dynasparse.devcluster import nodeops
from dynasparse.devcluster.fixture import wait_until

SPEC = {"model": "default", "replicas": 2, "slo": {"ttftP95Ms": 2000}, "quality": {"minBudget": 0.3},
        "control": {"intervalSeconds": 1}}


def pod_entry(status: dict, pod_name: str) -> dict:
    return next((p for p in status.get("pods") or [] if p.get("name") == pod_name), {})


def test_memory_pressure_lowers_that_pods_ceiling(operator_running, namespace):
    needs("dynasparse_worker.commands.serve", "the worker's `dynasparse serve` command")
    cluster = operator_running
    apply_model(cluster, namespace, "mp", SPEC)
    pods = wait_until(lambda: len(ready_worker_pods(cluster, namespace, "mp")) == 2
                      and ready_worker_pods(cluster, namespace, "mp"), 420, "2 worker pods Ready", interval=2)
    victim = pods[0]
    name, node = victim["metadata"]["name"], victim["spec"]["nodeName"]
    before = wait_until(lambda: pod_entry(model_status(cluster, namespace, "mp"), name).get("ceiling"), 60,
                        f"status.pods to report {name}'s ceiling")
    nodeops.set_condition(cluster.api, node, "MemoryPressure", True)
    try:
        after = wait_until(lambda: (c := pod_entry(model_status(cluster, namespace, "mp"), name).get("ceiling"))
                           is not None and c < before and c, 30, f"{name}'s ceiling to drop below {before}")
        assert after < before
        other = pods[1]["metadata"]["name"]
        assert pod_entry(model_status(cluster, namespace, "mp"), other).get("ceiling") == before
        wait_until(lambda: any(node in m for m in events_for(cluster, namespace, "mp")), 30,
                   f"an event naming node {node}")
    finally:
        nodeops.set_condition(cluster.api, node, "MemoryPressure", False)
