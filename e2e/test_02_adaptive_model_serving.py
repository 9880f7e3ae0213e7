"""Scenario 2: an AdaptiveModel with 3 replicas of the default model -> pods scheduled onto GPU nodes,
workers serving the OpenAI API at their pod IPs, `kubectl get am` showing the printer columns with
real values and `kubectl describe am` showing conditions and events."""

from __future__ import annotations

import pytest
import yaml
from e2e_support import model_api_key, needs

from dynasparse.devcluster.fixture import wait_until

SPEC = {"model": "default", "replicas": 3, "slo": {"ttftP95Ms": 2000}, "quality": {"maxLoss": 0.5},
        "worker": {"memory": "2Gi", "cpu": "1"}}


def ready_workers(cluster, namespace: str) -> list[dict]:
    pods = cluster.api.get(f"/api/v1/namespaces/{namespace}/pods",
                           labelSelector="dynasparse.io/model=chat,app.kubernetes.io/component=worker")["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp") and any(
        c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions") or [])]


def test_three_replicas_are_scheduled_on_gpu_nodes_and_serve(operator_running, namespace):
    needs("dynasparse_worker.commands.serve", "the worker's `dynasparse serve` command")
    cluster = operator_running
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(
        {"apiVersion": "dynasparse.io/v1alpha1", "kind": "AdaptiveModel", "metadata": {"name": "chat"},
         "spec": SPEC}))
    pods = wait_until(lambda: len(ready_workers(cluster, namespace)) == 3 and ready_workers(cluster, namespace),
                      420, "3 worker pods Ready (model load included)", interval=2)
    nodes = {p["spec"]["nodeName"] for p in pods}
    assert len(nodes) == 3 and all(n.startswith("gpu-") for n in nodes)  # one GPU each: spread by the scheduler

    import openai  # the real client, against one pod's OpenAI-compatible API

    port = next(p["containerPort"] for p in pods[0]["spec"]["containers"][0]["ports"] if p["name"] == "http")
    url = f"http://{pods[0]['status']['podIP']}:{port}/v1"
    client = openai.OpenAI(base_url=url, api_key=model_api_key(cluster, namespace, "chat"), timeout=120)
    answer = client.completions.create(model="default", prompt="The capital of France is", max_tokens=4)
    assert answer.choices[0].text.strip()
    # the operator wired the model's key into every worker: without it, no answer
    stranger = openai.OpenAI(base_url=url, api_key="not-the-key", timeout=60, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.completions.create(model="default", prompt="The capital of France is", max_tokens=4)

    table = wait_until(lambda: (out := cluster.kubectl("get", "am", "chat", "-n", namespace).stdout)
                       and "3/3" in out and out, 60, "`kubectl get am` to show 3/3 ready")
    header = table.splitlines()[0].split()
    assert header[:6] == ["NAME", "READY", "TTFT-SLO", "P95-TTFT", "BUDGET", "QUALITY-LOSS"]
    describe = cluster.kubectl("describe", "am", "chat", "-n", namespace).stdout
    assert "Conditions:" in describe and "Ready" in describe
    assert "Events:" in describe
