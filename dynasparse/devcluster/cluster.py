"""`up` / `down` / `status` of a dev cluster in a state directory.

`up` writes per-run certificates and kubeconfigs, starts etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and the process kubelet (each waited for in turn), links kubectl and helm into DIR/bin,
and returns once the nodes are Ready and the `default` ServiceAccount exists. `down` stops them all.
Called by `dynasparse dev-cluster` and by `fixture.dev_cluster()` (the pytest fixtures).
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import socket
import ssl
import sys
import time
import urllib.request
from pathlib import Path

from dynasparse.devcluster import binaries, config, nodes, pki, processes
from dynasparse.devcluster.errors import DevClusterError
from dynasparse.devcluster.rest import Api

SUBNET_REGISTRY = Path(os.environ.get("DYNASPARSE_DEVCLUSTER_REGISTRY", "/tmp/dynasparse-devcluster-subnets"))


@dataclasses.dataclass(frozen=True)
class ClusterInfo:
    config: config.ClusterConfig
    kubeconfig: Path
    server: str
    bin_dir: Path
    startup_seconds: float


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _claim_subnet(state_dir: Path) -> int:
    """Reserve 127.<n>.0.0/16 for this cluster's pods so parallel clusters never share pod IPs."""
    SUBNET_REGISTRY.mkdir(parents=True, exist_ok=True)
    candidates = list(range(10, 250))
    random.shuffle(candidates)
    for n in candidates:
        entry = SUBNET_REGISTRY / str(n)
        if entry.exists():
            owner = Path(entry.read_text().strip() or "/nonexistent")
            if owner == state_dir or not _running(owner):
                entry.unlink(missing_ok=True)  # stale: its cluster is gone
            else:
                continue
        try:
            fd = os.open(entry, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            continue
        os.write(fd, str(state_dir).encode())
        os.close(fd)
        return n
    raise DevClusterError(f"no free pod subnet: stop old clusters or clear {SUBNET_REGISTRY}")


def _release_subnet(state_dir: Path) -> None:
    try:
        n = config.ClusterConfig.load(state_dir).pod_subnet
    except (OSError, ValueError, TypeError):
        return
    entry = SUBNET_REGISTRY / str(n)
    if entry.exists() and entry.read_text().strip() == str(state_dir):
        entry.unlink(missing_ok=True)


def _running(state_dir: Path) -> bool:
    return any(processes.alive(pid) for pid in processes.recorded(state_dir).values())


def _https_ok(url: str) -> bool:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # components' self-signed serving certs
    with urllib.request.urlopen(url, context=ctx, timeout=2) as resp:
        return resp.status == 200


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return resp.status == 200


def _write_kubeconfigs(cfg: config.ClusterConfig) -> None:
    ca = cfg.pki / "ca.crt"
    cfg.kubeconfig.write_text(config.kubeconfig_yaml(cfg.server, ca, cert_file=cfg.pki / "admin.crt",
                                                     key_file=cfg.pki / "admin.key"))
    cfg.kubeconfig.chmod(0o600)
    (cfg.root / "kubeconfigs").mkdir(exist_ok=True)
    for name in ("controller-manager", "scheduler", "kubelet"):
        path = cfg.component_kubeconfig(name)
        path.write_text(config.kubeconfig_yaml(cfg.server, ca, cert_file=cfg.pki / f"{name}.crt",
                                               key_file=cfg.pki / f"{name}.key", user=name))


def _link_tools(bins: binaries.Binaries, bin_dir: Path) -> None:
    bin_dir.mkdir(exist_ok=True)
    for tool in (bins.kubectl, bins.helm, bins.etcd):
        link = bin_dir / tool.name
        link.unlink(missing_ok=True)
        link.symlink_to(tool)


def _nodes_ready(api: Api, expected: list[str]) -> bool:
    items = api.get("/api/v1/nodes")["items"]
    ready = {n["metadata"]["name"] for n in items
             if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))}
    return set(expected) <= ready


def up(state_dir: Path, gpu_nodes: int = 4, timeout: float = 120.0) -> ClusterInfo:
    """Start a cluster in `state_dir`; return once it can run pods. Raises DevClusterError."""
    started = time.monotonic()
    state_dir = Path(state_dir).resolve()
    if _running(state_dir):
        raise DevClusterError(f"a dev cluster is already running in {state_dir}: "
                              f"`dynasparse dev-cluster down --dir {state_dir}` first")
    bins = binaries.locate()
    for stale in ("etcd", "pki", "kubeconfigs", "pods", "pids"):
        shutil.rmtree(state_dir / stale, ignore_errors=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    cfg = config.ClusterConfig(
        dir=str(state_dir), etcd_client_port=free_port(), etcd_peer_port=free_port(),
        apiserver_port=free_port(), controller_manager_port=free_port(), scheduler_port=free_port(),
        pod_subnet=_claim_subnet(state_dir), gpu_nodes=gpu_nodes)
    cfg.save()
    try:
        pki.write_pki(cfg.pki)
        _write_kubeconfigs(cfg)
        _link_tools(bins, state_dir / "bin")
        _start_servers(cfg, bins, timeout)
    except BaseException:
        down(state_dir)
        raise
    return ClusterInfo(cfg, cfg.kubeconfig, cfg.server, state_dir / "bin", time.monotonic() - started)


def _start_servers(cfg: config.ClusterConfig, bins: binaries.Binaries, timeout: float) -> None:
    d = cfg.root
    pid = processes.start(d, "etcd", [str(bins.etcd), *config.etcd_args(cfg)])
    processes.wait_for(lambda: _http_ok(f"http://127.0.0.1:{cfg.etcd_client_port}/health"), timeout,
                       "etcd to answer /health", d, "etcd", pid)
    pid = processes.start(d, "kube-apiserver", [str(bins.kube_apiserver), *config.apiserver_args(cfg)])
    api = Api.for_cluster(cfg, "admin")
    processes.wait_for(lambda: api.request("GET", "/readyz", timeout=3) is not None, timeout,
                       "kube-apiserver /readyz", d, "kube-apiserver", pid)
    cm = processes.start(d, "kube-controller-manager",
                         [str(bins.kube_controller_manager), *config.controller_manager_args(cfg)])
    sched = processes.start(d, "kube-scheduler", [str(bins.kube_scheduler), *config.scheduler_args(cfg)])
    processes.wait_for(lambda: _https_ok(f"https://127.0.0.1:{cfg.controller_manager_port}/healthz"),
                       timeout, "kube-controller-manager /healthz", d, "kube-controller-manager", cm)
    processes.wait_for(lambda: _https_ok(f"https://127.0.0.1:{cfg.scheduler_port}/healthz"), timeout,
                       "kube-scheduler /healthz", d, "kube-scheduler", sched)
    kubelet = processes.start(d, "process-kubelet",
                              [sys.executable, "-m", "dynasparse.devcluster.kubelet", "--dir", str(d)])
    names = [n.name for n in nodes.cluster_nodes(cfg.gpu_nodes)]
    processes.wait_for(lambda: _nodes_ready(api, names), timeout, f"nodes {', '.join(names)} Ready",
                       d, "process-kubelet", kubelet)
    processes.wait_for(lambda: api.exists("/api/v1/namespaces/default/serviceaccounts/default"), timeout,
                       "the default ServiceAccount (service-account controller)", d,
                       "kube-controller-manager", cm)


def down(state_dir: Path, purge: bool = False) -> list[str]:
    """Stop everything `up` started in `state_dir` (kubelet first, so it stops its pods)."""
    state_dir = Path(state_dir).resolve()
    stopped = processes.stop_all(state_dir)
    _kill_orphan_pods(state_dir)
    _release_subnet(state_dir)
    if purge:
        shutil.rmtree(state_dir, ignore_errors=True)
    return stopped


def _kill_orphan_pods(state_dir: Path) -> None:
    """Pod processes the kubelet could not stop (it was killed): pids in pods/*/<container>.pid."""
    for pid_file in (state_dir / "pods").glob("*/*.pid"):
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            continue
        if processes.alive(pid):
            processes.terminate(pid, 5.0)


def status(state_dir: Path) -> dict[str, bool]:
    return {name: processes.alive(pid) for name, pid in processes.recorded(Path(state_dir).resolve()).items()}
