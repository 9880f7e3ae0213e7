"""Constants and helpers shared by the end-to-end scenarios and their conftest (a module of its own
so tests import it by a name no other folder uses)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from dynasparse.devcluster.fixture import DevCluster

CHART = Path(__file__).resolve().parents[1] / "charts" / "dynasparse"
RELEASE, RELEASE_NAMESPACE = "dynasparse", "dynasparse-system"
OPERATOR_SA = "dynasparse-operator"

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
