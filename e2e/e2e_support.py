"""Constants and helpers shared by the end-to-end scenarios and their conftest (a module of its own
so tests import it by a name no other folder uses)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from dynasparse.devcluster.fixture import DevCluster

CHART = Path(__file__).resolve().parents[1] / "charts" / "dynasparse"
RELEASE, RELEASE_NAMESPACE = "dynasparse", "dynasparse-system"
OPERATOR_SA = "dynasparse-operator"
# DYNASPARSE_E2E_BASE_RATE: requests per second across a model's pods. Scenario 3 measures the
# workers' capacity and sizes its base rate from it unless this is set; scenario 5 uses it as is
# (default 0.2/s, what CPU workers on a shared 2-core machine sustain).
BASE_RATE_OVERRIDE = float(os.environ["DYNASPARSE_E2E_BASE_RATE"]) if os.environ.get("DYNASPARSE_E2E_BASE_RATE") \
    else None
BASE_RATE = BASE_RATE_OVERRIDE or 0.2

def needs(module: str, what: str) -> None:
    """Skip (saying so) when a component another issue delivers is not there yet."""
    parent = module.rsplit(".", 1)[0]
    if importlib.util.find_spec(parent) is None or importlib.util.find_spec(module) is None:
        pytest.skip(f"{what} ({module}) is not written yet")

def operator_pod(cluster: DevCluster) -> dict | None:
    pods = cluster.api.get(f"/api/v1/namespaces/{RELEASE_NAMESPACE}/pods",
                           labelSelector="app.kubernetes.io/component=operator")["items"]
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    return live[0] if live else None

def pod_ready(pod: dict | None) -> bool:
    return bool(pod) and any(c["type"] == "Ready" and c["status"] == "True"
                             for c in (pod.get("status") or {}).get("conditions") or [])


def apply_model(cluster: DevCluster, namespace: str, name: str, spec: dict) -> dict:
    """kubectl apply an AdaptiveModel; return it as the API server stored it."""
    import yaml

    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(
        {"apiVersion": "dynasparse.io/v1alpha1", "kind": "AdaptiveModel", "metadata": {"name": name},
         "spec": spec}))
    return cluster.api.get(f"/apis/dynasparse.io/v1alpha1/namespaces/{namespace}/adaptivemodels/{name}")


def model_api_key(cluster: DevCluster, namespace: str, name: str) -> str:
    """The bearer key of a model's workers, read where its status says it lives (as a user would
    with the status hint); "none" when the model's auth is Disabled."""
    import base64

    from dynasparse.devcluster.fixture import wait_until

    auth = wait_until(lambda: model_status(cluster, namespace, name).get("auth"), 60,
                      f"status.auth of AdaptiveModel {name}")
    if not auth.get("secretName"):
        return "none"
    secret = cluster.api.get(f"/api/v1/namespaces/{namespace}/secrets/{auth['secretName']}")
    return base64.b64decode(secret["data"][auth["secretKey"]]).decode()


def model_status(cluster: DevCluster, namespace: str, name: str) -> dict:
    am = cluster.api.get(f"/apis/dynasparse.io/v1alpha1/namespaces/{namespace}/adaptivemodels/{name}")
    return am.get("status") or {}


def ready_worker_pods(cluster: DevCluster, namespace: str, model: str) -> list[dict]:
    pods = cluster.api.get(f"/api/v1/namespaces/{namespace}/pods",
                           labelSelector=f"dynasparse.io/model={model},app.kubernetes.io/component=worker")["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp") and pod_ready(p)]


def events_for(cluster: DevCluster, namespace: str, name: str) -> list[str]:
    items = cluster.api.get(f"/api/v1/namespaces/{namespace}/events",
                            fieldSelector=f"involvedObject.name={name}")["items"]
    return [e.get("message", "") for e in items]
