"""`dynasparse dev-cluster up` / `down` from the command line: a usable kubeconfig and tools, and
nothing left running afterwards."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dynasparse.devcluster import binaries, processes
from dynasparse.devcluster.errors import DevClusterError

pytestmark = pytest.mark.cluster


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dynasparse", "dev-cluster", *args], capture_output=True,
                          text=True, timeout=240, **kw)


def test_up_gives_a_working_kubectl_and_down_stops_everything(tmp_path):
    try:
        binaries.locate()
    except DevClusterError as exc:
        pytest.fail(str(exc), pytrace=False)
    state = tmp_path / "c"
    up = cli("up", "--dir", str(state), "--nodes", "1")
    try:
        assert up.returncode == 0, up.stderr
        pids = processes.recorded(state)
        assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "process-kubelet"}
        nodes = subprocess.run([str(state / "bin" / "kubectl"), "get", "nodes", "-o", "name"], capture_output=True,
                               text=True, env={**os.environ, "KUBECONFIG": str(state / "kubeconfig")}, timeout=60)
        assert nodes.stdout.split() == ["node/cpu-0", "node/gpu-0"]
        again = cli("up", "--dir", str(state))
        assert again.returncode == 2 and "already running" in again.stderr
    finally:
        down = cli("down", "--dir", str(state))
    assert down.returncode == 0, down.stderr
    assert not any(processes.alive(pid) for pid in pids.values())
