"""A pod's processes under the process kubelet's runtime, without a cluster: real processes on a
loopback address, real HTTP probes, restarts by policy, SIGTERM on termination."""

from __future__ import annotations

import base64
import dataclasses
import shutil
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from dynasparse.devcluster.kubelet.runtime import BACKOFF_MAX, BACKOFF_START, PodContext, PodRuntime
from dynasparse.devcluster.kubelet.status import pod_status


@pytest.fixture
def ctx():
    pool = ThreadPoolExecutor(2)
    configmaps = {"web": {"data": {"hello.txt": "hi\n"}}}
    yield PodContext(python=sys.executable, base_env={}, lookup=lambda kind, ns, name: configmaps.get(name),
                     token=lambda pod, aud, exp: "token", kubeconfig_for=lambda pod, d: None,
                     executor=pool, backoff_start=0.5)  # a kubelet's 10 s first back-off, shortened
    pool.shutdown(cancel_futures=True)


def pod(command: list[str], policy: str = "Always", **container) -> dict:
    return {"metadata": {"name": "p", "namespace": "ns", "uid": f"u{time.monotonic_ns()}"},
            "spec": {"nodeName": "gpu-0", "restartPolicy": policy, "terminationGracePeriodSeconds": 5,
                     "containers": [{"name": "c", "image": "dynasparse-test", "command": command, **container}],
                     "volumes": [{"name": "web", "configMap": {"name": "web"}}]}}


def run_until(runtime: PodRuntime, spec: dict, done, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runtime.poll(spec, time.monotonic())
        if done():
            return
        time.sleep(0.05)
    raise AssertionError(f"not reached in {timeout} s: {runtime.views()}")


def free_ip() -> str:
    return f"127.251.{time.monotonic_ns() % 250 + 1}.{time.monotonic_ns() % 200 + 2}"


def test_a_server_becomes_ready_on_its_pod_ip_and_stops_on_sigterm(ctx, tmp_path):
    ip = free_ip()
    spec = pod(["python", "-m", "http.server", "--bind", "$(IP)", "--directory", "/data", "8080"],
               env=[{"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
               volumeMounts=[{"name": "web", "mountPath": "/data"}],
               readinessProbe={"httpGet": {"path": "/hello.txt", "port": 8080}, "periodSeconds": 1})
    runtime = PodRuntime(spec, ip, tmp_path, ctx)
    run_until(runtime, spec, lambda: runtime.views()[0].ready)
    assert urllib.request.urlopen(f"http://{ip}:8080/hello.txt", timeout=5).read() == b"hi\n"
    assert pod_status(spec, runtime.views(), ip, "t", runtime.started_at)["phase"] == "Running"
    runtime.begin_termination(5, time.monotonic())
    run_until(runtime, spec, runtime.finished, timeout=6)
    assert runtime.views()[0].exit_code == 143  # 128 + SIGTERM, as a container runtime reports


def test_a_crashing_container_restarts_with_back_off_under_restart_policy_always(ctx, tmp_path):
    spec = pod(["python", "-c", "raise SystemExit(3)"])
    runtime = PodRuntime(spec, free_ip(), tmp_path, ctx)
    run_until(runtime, spec, lambda: runtime.views()[0].restart_count >= 1)
    view = runtime.views()[0]
    assert view.last_terminated["exitCode"] == 3
    assert pod_status(spec, runtime.views(), None, "t", runtime.started_at)["phase"] == "Running"


def test_a_failed_container_under_restart_policy_never_fails_the_pod(ctx, tmp_path):
    spec = pod(["python", "-c", "raise SystemExit(3)"], policy="Never")
    runtime = PodRuntime(spec, free_ip(), tmp_path, ctx)
    run_until(runtime, spec, lambda: runtime.views()[0].state == "terminated")
    assert pod_status(spec, runtime.views(), None, "t", runtime.started_at)["phase"] == "Failed"


def test_a_process_ignoring_sigterm_is_killed_when_the_grace_period_ends(ctx, tmp_path):
    script = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    spec = pod(["python", "-c", script])
    runtime = PodRuntime(spec, free_ip(), tmp_path, ctx)
    run_until(runtime, spec, lambda: (tmp_path / "c.log").exists() and b"up" in (tmp_path / "c.log").read_bytes())
    started = time.monotonic()
    runtime.begin_termination(1.0, started)
    run_until(runtime, spec, runtime.finished, timeout=5)
    assert 0.9 < time.monotonic() - started < 3 and runtime.views()[0].exit_code == 137


def test_a_container_that_cannot_start_backs_off_10_s_doubling_to_5_min_and_keeps_the_pod_running(
        ctx, tmp_path):
    faithful = dataclasses.replace(ctx, backoff_start=BACKOFF_START, backoff_max=BACKOFF_MAX)
    spec = pod(["/nonexistent/bin/server", "--port", "8080"])
    runtime = PodRuntime(spec, free_ip(), tmp_path, faithful)
    now, waits = 1000.0, []
    for _ in range(8):
        runtime.poll(spec, now)
        view = runtime.views()[0]
        assert view.state == "waiting" and view.reason == "CrashLoopBackOff"
        assert "No such file" in view.message and view.last_terminated["reason"] == "StartError"
        status = pod_status(spec, runtime.views(), None, "t", runtime.started_at)
        assert status["phase"] == "Running", "never completed, so never replaced"
        assert status["containerStatuses"][0]["state"]["waiting"]["reason"] == "CrashLoopBackOff"
        runtime.poll(spec, now + 1.0)  # nothing happens before the back-off ends
        assert runtime.views()[0].restart_count == len(waits)
        wait = runtime.containers["c"].restart_at - now
        waits.append(round(wait))
        now += wait
    assert waits == [10, 20, 40, 80, 160, 300, 300, 300]


def test_a_container_that_cannot_start_under_restart_policy_never_fails_with_start_error(ctx, tmp_path):
    spec = pod(["/nonexistent/bin/server"], policy="Never")
    runtime = PodRuntime(spec, free_ip(), tmp_path, ctx)
    runtime.poll(spec, time.monotonic())
    view = runtime.views()[0]
    assert view.state == "terminated" and view.reason == "StartError" and view.exit_code == 128
    assert pod_status(spec, runtime.views(), None, "t", runtime.started_at)["phase"] == "Failed"


def test_an_interpreter_under_tmp_runs_in_a_pod_that_mounts_an_empty_dir_at_tmp(ctx, tmp_path):
    venv = Path(tempfile.mkdtemp(prefix="venv-", dir="/tmp"))
    try:
        (venv / "bin").mkdir()
        (venv / "bin" / "python").symlink_to(sys.executable)
        spec = pod(["python", "-c", "import sys; print('ran', sys.argv[1])", "/tmp/scratch"],
                   policy="Never", volumeMounts=[{"name": "scratch", "mountPath": "/tmp"}])
        spec["spec"]["volumes"].append({"name": "scratch", "emptyDir": {}})
        runtime = PodRuntime(spec, free_ip(), tmp_path,
                             dataclasses.replace(ctx, python=str(venv / "bin" / "python")))
        run_until(runtime, spec, lambda: runtime.views()[0].state == "terminated")
        view = runtime.views()[0]
        assert view.exit_code == 0, view
        out = (tmp_path / "c.log").read_text()
        assert f"ran {tmp_path}/volumes/scratch/scratch" in out, "the pod's own /tmp is still its volume"
    finally:
        shutil.rmtree(venv)


def test_a_renewed_secret_reaches_the_running_pods_files_within_a_minute(ctx, tmp_path):
    secret = {"data": {"server.crt": base64.b64encode(b"first").decode()}}
    lookup = lambda kind, ns, name: secret if kind == "Secret" else None  # noqa: E731
    spec = pod(["python", "-c", "import time; time.sleep(60)"],
               volumeMounts=[{"name": "tls", "mountPath": "/etc/tls"}])
    spec["spec"]["volumes"] = [{"name": "tls", "secret": {"secretName": "tls"}}]
    runtime = PodRuntime(spec, free_ip(), tmp_path, dataclasses.replace(ctx, lookup=lookup))
    cert = tmp_path / "volumes" / "tls" / "server.crt"
    try:
        runtime.poll(spec, 0.0)
        assert cert.read_bytes() == b"first"
        secret["data"]["server.crt"] = base64.b64encode(b"renewed").decode()
        runtime.poll(spec, 30.0)
        assert cert.read_bytes() == b"first", "not before the kubelet's next sync"
        runtime.poll(spec, 61.0)
        assert cert.read_bytes() == b"renewed"
        assert not list(cert.parent.glob(".*.new")), "replaced atomically, nothing left behind"
    finally:
        runtime.kill_now()
