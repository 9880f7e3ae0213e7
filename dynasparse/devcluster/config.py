"""Pure description of one dev cluster: its ports and paths, each server's command line, the
kubeconfigs, and the state file (`DIR/cluster.json`) that `down`, the kubelet and tests read back.

Called by `cluster.up()` (which picks the ports) and by the kubelet process; no I/O except
`save`/`load`. Everything listens on 127.0.0.1 only; pods get addresses in 127.<subnet>.0.0/16.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import yaml

SERVICE_CIDR = "10.96.0.0/16"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """Where one cluster lives and which ports it took. Saved as DIR/cluster.json."""

    dir: str
    etcd_client_port: int
    etcd_peer_port: int
    apiserver_port: int
    controller_manager_port: int
    scheduler_port: int
    pod_subnet: int  # pods get 127.<pod_subnet>.x.y
    gpu_nodes: int = 4

    @property
    def root(self) -> Path:
        return Path(self.dir)

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    def component_kubeconfig(self, name: str) -> Path:
        return self.root / "kubeconfigs" / f"{name}.yaml"

    def save(self) -> None:
        (self.root / "cluster.json").write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, state_dir: Path) -> "ClusterConfig":
        return cls(**json.loads((Path(state_dir) / "cluster.json").read_text()))


def kubeconfig_yaml(server: str, ca_file: Path, *, cert_file: Path | None = None,
                    key_file: Path | None = None, token: str | None = None,
                    user: str = "admin", namespace: str = "default") -> str:
    """A one-context kubeconfig; either a client certificate or a bearer token."""
    creds: dict[str, str] = {}
    if cert_file and key_file:
        creds = {"client-certificate": str(cert_file), "client-key": str(key_file)}
    if token:
        creds["token"] = token
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "dynasparse-dev",
                      "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": user, "user": creds}],
        "contexts": [{"name": "dynasparse-dev",
                      "context": {"cluster": "dynasparse-dev", "user": user, "namespace": namespace}}],
        "current-context": "dynasparse-dev",
    }
    return yaml.safe_dump(doc, sort_keys=False)


def etcd_args(cfg: ClusterConfig) -> list[str]:
    client = f"http://127.0.0.1:{cfg.etcd_client_port}"
    peer = f"http://127.0.0.1:{cfg.etcd_peer_port}"
    return [
        "--name=dev", f"--data-dir={cfg.root / 'etcd'}",
        f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=dev={peer}", "--initial-cluster-state=new",
        "--unsafe-no-fsync",  # a throw-away test cluster: durability is not worth the latency
        "--log-level=warn", "--listen-metrics-urls=",
    ]


def apiserver_args(cfg: ClusterConfig) -> list[str]:
    pki = cfg.pki
    return [
        f"--etcd-servers=http://127.0.0.1:{cfg.etcd_client_port}",
        "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
        # Endpoints may not hold loopback addresses, so the `kubernetes` Service gets none; clients
        # in pods use KUBERNETES_SERVICE_HOST/PORT or the kubeconfig the process kubelet writes.
        "--endpoint-reconciler-type=none",
        f"--secure-port={cfg.apiserver_port}",
        f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--client-ca-file={pki / 'ca.crt'}",
        f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
        "--authorization-mode=RBAC",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--allow-privileged=false",
        f"--cert-dir={cfg.root / 'pki' / 'apiserver-generated'}",
        "--profiling=false", "--v=1",
    ]


def controller_manager_args(cfg: ClusterConfig) -> list[str]:
    kubeconfig = cfg.component_kubeconfig("controller-manager")
    return [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1", f"--secure-port={cfg.controller_manager_port}",
        f"--cert-dir={cfg.root / 'pki' / 'controller-manager-generated'}",
        f"--service-account-private-key-file={cfg.pki / 'sa.key'}",
        f"--root-ca-file={cfg.pki / 'ca.crt'}",
        "--use-service-account-credentials=true",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--controllers=*", "--leader-elect=false",
        # Node lifecycle: notice a silent node within 20 s and evict its pods soon after (tests wait).
        "--node-monitor-period=2s", "--node-monitor-grace-period=20s",
        "--profiling=false", "--v=1",
    ]


def scheduler_args(cfg: ClusterConfig) -> list[str]:
    kubeconfig = cfg.component_kubeconfig("scheduler")
    return [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1", f"--secure-port={cfg.scheduler_port}",
        f"--cert-dir={cfg.root / 'pki' / 'scheduler-generated'}",
        "--leader-elect=false", "--profiling=false", "--v=1",
    ]
