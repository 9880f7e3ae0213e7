"""Scenario 6: kill a worker process abruptly, and restart the operator -> the loop recovers and
budgets resume from status (no jump back to dense)."""

from __future__ import annotations

import os
import signal

from e2e_support import RELEASE_NAMESPACE, apply_model, model_status, needs, operator_pod, pod_ready, ready_worker_pods

from dynasparse.devcluster.fixture import wait_until

SPEC = {"model": "default", "replicas": 2, "slo": {"ttftP95Ms": 5000}, "quality": {"minBudget": 0.5},
        "control": {"intervalSeconds": 1, "maxBudget": 0.7}}


def container_pid(pod: dict) -> int:
    container_id = pod["status"]["containerStatuses"][0]["containerID"]
    assert container_id.startswith("process://")
    return int(container_id.removeprefix("process://"))


def test_a_killed_worker_and_a_restarted_operator_resume_the_loop(operator_running, namespace):
    needs("dynasparse_worker.commands.serve", "the worker's `dynasparse serve` command")
    cluster = operator_running
    apply_model(cluster, namespace, "rec", SPEC)
    pods = wait_until(lambda: len(ready_worker_pods(cluster, namespace, "rec")) == 2
                      and ready_worker_pods(cluster, namespace, "rec"), 420, "2 workers Ready", interval=2)
    budget = wait_until(lambda: model_status(cluster, namespace, "rec").get("budget"), 60, "a budget in status")
    assert budget <= 0.7

    victim = pods[0]
    os.kill(container_pid(victim), signal.SIGKILL)  # abrupt: no drain, no goodbye
    wait_until(lambda: (p := cluster.api.get(f"/api/v1/namespaces/{namespace}/pods/{victim['metadata']['name']}"))
               and p["status"]["containerStatuses"][0]["restartCount"] >= 1 and pod_ready(p), 300,
               "the killed worker to be restarted and Ready again", interval=2)

    old = operator_pod(cluster)
    cluster.api.delete(f"/api/v1/namespaces/{RELEASE_NAMESPACE}/pods/{old['metadata']['name']}")
    wait_until(lambda: (p := operator_pod(cluster)) and p["metadata"]["uid"] != old["metadata"]["uid"]
               and pod_ready(p), 120, "a new operator pod Ready")
    resumed = wait_until(lambda: [b for p in model_status(cluster, namespace, "rec").get("pods") or []
                                  if (b := p.get("budget")) is not None], 60, "per-pod budgets after the restart")
    assert max(resumed) <= 0.7  # resumed from status, not back to dense
