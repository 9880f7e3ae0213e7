"""The process kubelet's loop: register nodes, renew leases, run and report the pods bound to them.

Started by `cluster.up()` through `__main__`. One thread watches pods (only to wake the loop early);
the loop lists pods, advances each pod's `PodRuntime`, patches pod status when it changed, and
finishes deletions (SIGTERM, grace period, SIGKILL, then a grace-0 delete, as a kubelet does).
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dynasparse.devcluster import config, nodes
from dynasparse.devcluster.kubelet import status as pod_status_mod
from dynasparse.devcluster.kubelet.runtime import PodContext, PodRuntime, grace_period
from dynasparse.devcluster.rest import MERGE, ApiError, Api

LEASE_RENEW_SECONDS = 10.0
NODE_STATUS_SECONDS = 30.0
LIST_EVERY_SECONDS = 1.0
TOKEN_SECONDS = 86400


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


class Kubelet:
    def __init__(self, cfg: config.ClusterConfig):
        self.cfg = cfg
        self.api = Api.for_cluster(cfg, "kubelet")
        self.nodes = nodes.cluster_nodes(cfg.gpu_nodes)
        self.node_names = {n.name for n in self.nodes}
        self.runtimes: dict[str, PodRuntime] = {}
        self.ips: dict[str, str] = {}
        self.pods: dict[str, dict] = {}
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="probe")
        self.ctx = PodContext(python=sys.executable, base_env=self._base_env(), lookup=self.lookup,
                              token=self.mint_token, kubeconfig_for=self.pod_kubeconfig,
                              executor=self.executor)

    # ---- environment and credentials for pods ------------------------------------------------
    def _base_env(self) -> dict[str, str]:
        """The kubelet's own environment (PATH, Python, caches) minus cluster credentials, plus the
        in-cluster service address (the API server on loopback)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_") and k != "KUBECONFIG"}
        env.update({"KUBERNETES_SERVICE_HOST": "127.0.0.1",
                    "KUBERNETES_SERVICE_PORT": str(self.cfg.apiserver_port),
                    "PYTHONUNBUFFERED": "1"})
        return env

    def lookup(self, kind: str, namespace: str, name: str) -> dict | None:
        plural = {"ConfigMap": "configmaps", "Secret": "secrets"}[kind]
        try:
            return self.api.get(f"/api/v1/namespaces/{namespace}/{plural}/{name}")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def mint_token(self, pod: dict, audience: str | None, expiration: int) -> str:
        """A token of the pod's ServiceAccount, bound to the pod, from the TokenRequest API."""
        meta = pod["metadata"]
        sa = pod["spec"].get("serviceAccountName") or "default"
        spec: dict = {"expirationSeconds": max(600, expiration),
                      "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"],
                                         "uid": meta["uid"]}}
        if audience:
            spec["audiences"] = [audience]
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        result = self.api.post(f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{sa}/token", body)
        return result["status"]["token"]

    def pod_kubeconfig(self, pod: dict, pod_dir: Path) -> Path | None:
        """Write `<pod dir>/serviceaccount/{token,ca.crt,namespace}` and a kubeconfig using that token,
        so the pod's clients authenticate as its ServiceAccount and RBAC applies for real."""
        if pod["spec"].get("automountServiceAccountToken") is False:
            return None
        sa_dir = pod_dir / "serviceaccount"
        sa_dir.mkdir(parents=True, exist_ok=True)
        token = self.mint_token(pod, None, TOKEN_SECONDS)
        (sa_dir / "token").write_text(token)
        shutil.copyfile(self.cfg.pki / "ca.crt", sa_dir / "ca.crt")
        (sa_dir / "namespace").write_text(pod["metadata"]["namespace"])
        path = pod_dir / "kubeconfig"
        sa = pod["spec"].get("serviceAccountName") or "default"
        path.write_text(config.kubeconfig_yaml(self.cfg.server, sa_dir / "ca.crt", token=token,
                                               user=f"{pod['metadata']['namespace']}:{sa}",
                                               namespace=pod["metadata"]["namespace"]))
        path.chmod(0o600)
        return path

    # ---- nodes -------------------------------------------------------------------------------
    def register_nodes(self) -> None:
        now = nodes.now_rfc3339()
        for spec in self.nodes:
            try:
                self.api.post("/api/v1/nodes", nodes.node_object(spec))
                log(f"registered node {spec.name}")
            except ApiError as exc:
                if exc.status != 409:
                    raise
                self.api.patch(f"/api/v1/nodes/{spec.name}", {"metadata": {"labels": spec.labels()}})
            self.api.patch(f"/api/v1/nodes/{spec.name}/status", nodes.initial_status(spec, now))
        self.renew_leases()

    def renew_leases(self) -> None:
        now = nodes.now_micro()
        for spec in self.nodes:
            path = f"/apis/coordination.k8s.io/v1/namespaces/{nodes.LEASE_NAMESPACE}/leases/{spec.name}"
            try:
                self.api.patch(path, {"spec": {"holderIdentity": spec.name, "renewTime": now,
                                               "leaseDurationSeconds": nodes.LEASE_SECONDS}}, MERGE)
            except ApiError as exc:
                if exc.status != 404:
                    raise
                lease = nodes.lease_object(spec.name, now)
                node_uid = self.api.get(f"/api/v1/nodes/{spec.name}")["metadata"]["uid"]
                lease["metadata"]["ownerReferences"] = [
                    {"apiVersion": "v1", "kind": "Node", "name": spec.name, "uid": node_uid}]
                self.api.post(f"/apis/coordination.k8s.io/v1/namespaces/{nodes.LEASE_NAMESPACE}/leases", lease)

    def post_node_status(self) -> None:
        now = nodes.now_rfc3339()
        for spec in self.nodes:
            try:
                self.api.patch(f"/api/v1/nodes/{spec.name}/status", nodes.heartbeat_patch(now))
            except ApiError as exc:
                if exc.status != 404:
                    raise
                self.register_nodes()  # someone deleted a node: register it again, as a kubelet does
                return

    # ---- pods --------------------------------------------------------------------------------
    def watch_pods(self) -> None:
        while not self.stopping.is_set():
            try:
                for _event in self.api.watch("/api/v1/pods", timeout_seconds=60):
                    self.wake.set()
                    if self.stopping.is_set():
                        return
            except Exception as exc:  # noqa: BLE001 - the API server restarted, or a timeout
                log(f"pod watch interrupted ({exc}); re-watching")
                time.sleep(1)

    def allocate_ip(self, uid: str) -> str:
        used = set(self.ips.values())
        for index in range(250 * 250):
            ip = f"127.{self.cfg.pod_subnet}.{1 + index // 250}.{1 + index % 250}"
            if ip not in used:
                self.ips[uid] = ip
                return ip
        raise RuntimeError("out of pod IPs")

    def pod_dir(self, pod: dict) -> Path:
        meta = pod["metadata"]
        return self.cfg.root / "pods" / f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}"

    def list_pods(self) -> None:
        items = self.api.get("/api/v1/pods")["items"]
        self.pods = {p["metadata"]["uid"]: p for p in items if p["spec"].get("nodeName") in self.node_names}

    def sync(self) -> None:
        now = time.monotonic()
        for uid, pod in list(self.pods.items()):
            try:
                self.sync_pod(pod, now)
            except ApiError as exc:
                if exc.status not in (404, 409):
                    log(f"pod {pod['metadata']['name']}: {exc}")
            except Exception:  # noqa: BLE001 - one bad pod must not stop the others
                log(f"pod {pod['metadata']['name']}: {traceback.format_exc()}")
        for uid in set(self.runtimes) - set(self.pods):  # gone from the API (force-deleted)
            self.runtimes[uid].kill_now()
            self.forget(uid)

    def sync_pod(self, pod: dict, now: float) -> None:
        meta, uid = pod["metadata"], pod["metadata"]["uid"]
        runtime = self.runtimes.get(uid)
        if meta.get("deletionTimestamp"):
            if runtime is not None:
                runtime.begin_termination(grace_period(pod), now)
                runtime.poll(pod, now)
                if not runtime.finished():
                    return
            self.api.delete(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                            {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}})
            log(f"pod {meta['namespace']}/{meta['name']} terminated and removed")
            self.pods.pop(uid, None)
            self.forget(uid)
            return
        if runtime is None:
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                return  # finished before we (re)started: nothing to run
            runtime = PodRuntime(pod, self.allocate_ip(uid), self.pod_dir(pod), self.ctx)
            self.runtimes[uid] = runtime
            log(f"pod {meta['namespace']}/{meta['name']} on {pod['spec']['nodeName']} at {runtime.pod_ip}")
        runtime.poll(pod, now)
        desired = pod_status_mod.pod_status(pod, runtime.views(), runtime.pod_ip, nodes.now_rfc3339(),
                                            runtime.started_at)
        if pod_status_mod.status_differs(pod.get("status"), desired):
            updated = self.api.patch(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
                                     {"status": desired})
            self.pods[uid] = updated

    def forget(self, uid: str) -> None:
        self.runtimes.pop(uid, None)
        self.ips.pop(uid, None)

    # ---- main loop ---------------------------------------------------------------------------
    def run(self) -> None:
        self.register_nodes()
        threading.Thread(target=self.watch_pods, name="pod-watch", daemon=True).start()
        last_lease = last_status = last_list = 0.0
        while not self.stopping.is_set():
            now = time.monotonic()
            try:
                if now - last_lease >= LEASE_RENEW_SECONDS:
                    self.renew_leases()
                    last_lease = now
                if now - last_status >= NODE_STATUS_SECONDS:
                    self.post_node_status()
                    last_status = now
                if self.wake.is_set() or now - last_list >= LIST_EVERY_SECONDS:
                    self.wake.clear()
                    self.list_pods()
                    last_list = now
                self.sync()
            except Exception:  # noqa: BLE001 - keep the nodes alive through API hiccups
                log(f"loop error: {traceback.format_exc()}")
                time.sleep(1)
            self.wake.wait(0.2)
        self.shutdown()

    def shutdown(self) -> None:
        """Stop every pod process (the whole cluster is going away): SIGTERM, 5 s, SIGKILL."""
        now = time.monotonic()
        for runtime in self.runtimes.values():
            runtime.begin_termination(5.0, now)
        deadline = now + 6.0
        while time.monotonic() < deadline and not all(r.finished() for r in self.runtimes.values()):
            for uid, runtime in self.runtimes.items():
                runtime._reap_all(time.monotonic())
            time.sleep(0.1)
        for runtime in self.runtimes.values():
            runtime.kill_now()
        self.executor.shutdown(wait=False, cancel_futures=True)
        log("process kubelet stopped")
