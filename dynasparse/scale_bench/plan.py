"""The simulated fleet both processes agree on: models, pods, loopback addresses, certificates.

`make_plan` lays out `streams` pods over models of `pods_per_model` pods, each pod on its own
127.0.x.y address (Linux routes all of 127/8 to the loopback interface), all on one control port
as real pods are. Certificates are made the way the operator makes them: its CA (`pki.make_ca`),
one worker server certificate per model for the names the operator verifies
(`manifests.worker_dns_names`), written as the worker TLS Secret's files (`manifests.tls_secret`)
into one folder per model, which every pod of that model serves, as pods mounting one Secret do.
"""

from __future__ import annotations

import dataclasses
import json
import socket
from pathlib import Path

from dynasparse_operator import manifests, pki
from dynasparse_operator.settings import ControlSettings

NAMESPACE = "scale-bench"
FIRST_HOST = (127, 0, 1, 1)
HOSTS_PER_OCTET = 250  # x.y.z.1 .. x.y.z.250


@dataclasses.dataclass(frozen=True)
class ModelPlan:
    name: str
    uid: str
    pods: dict[str, str]  # pod name -> IP
    tls_dir: str

    @property
    def owner(self) -> manifests.Owner:
        return manifests.Owner(self.name, NAMESPACE, self.uid)


@dataclasses.dataclass(frozen=True)
class Plan:
    port: int
    ca_dir: str  # ca.crt and ca.key: the operator signs its client certificate with them
    models: tuple[ModelPlan, ...]
    ttft_slo_ms: float
    min_budget: float
    interval_s: float
    report_interval_s: float

    @property
    def streams(self) -> int:
        return sum(len(m.pods) for m in self.models)

    def spec(self) -> dict:
        """The AdaptiveModel spec every simulated model has."""
        return {"model": "default", "replicas": 1, "slo": {"ttftP95Ms": self.ttft_slo_ms},
                "quality": {"minBudget": self.min_budget},
                "control": {"intervalSeconds": self.interval_s}}

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def load(cls, path: Path) -> "Plan":
        raw = json.loads(path.read_text())
        models = tuple(ModelPlan(**m) for m in raw.pop("models"))
        return cls(models=models, **raw)


def pod_ip(index: int) -> str:
    a, b, c, d = FIRST_HOST
    c += index // HOSTS_PER_OCTET
    d += index % HOSTS_PER_OCTET
    if c > 255:
        raise ValueError(f"pod {index}: more loopback addresses than the plan lays out")
    return f"{a}.{b}.{c}.{d}"


def free_port() -> int:
    """A port free on the first pod address (the others are checked when the servers bind)."""
    with socket.socket() as s:
        s.bind((pod_ip(0), 0))
        return s.getsockname()[1]


def make_plan(folder: Path, streams: int, pods_per_model: int, *, port: int | None = None,
              ttft_slo_ms: float = 500.0, min_budget: float = 0.05,
              interval_s: float = ControlSettings.interval_s,
              report_interval_s: float = ControlSettings.report_interval_s,
              ca: pki.KeyPair | None = None) -> Plan:
    """Lay out the fleet and write its certificates under `folder` (intervals: the operator's
    defaults unless given)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = ca or pki.make_ca()
    (folder / "ca.crt").write_bytes(ca.cert_pem)
    (folder / "ca.key").write_bytes(ca.key_pem)
    per_model = max(1, min(pods_per_model or streams, streams))
    models = []
    for m, first in enumerate(range(0, streams, per_model)):
        name = f"m{m:03d}"
        owner = manifests.Owner(name, NAMESPACE, f"uid-{name}")
        leaf = pki.issue(ca, manifests.worker_common_name(owner), server=True,
                         dns_names=manifests.worker_dns_names(owner))
        secret = manifests.tls_secret(owner, ca.cert_pem, leaf.cert_pem, leaf.key_pem)
        tls_dir = folder / name
        tls_dir.mkdir(exist_ok=True)
        for file_name, text in secret["stringData"].items():
            (tls_dir / file_name).write_text(text)
        pods = {f"{name}-w{i:04d}": pod_ip(i) for i in range(first, min(first + per_model, streams))}
        models.append(ModelPlan(name, owner.uid, pods, str(tls_dir)))
    return Plan(port=port or free_port(), ca_dir=str(folder), models=tuple(models),
                ttft_slo_ms=ttft_slo_ms, min_budget=min_budget, interval_s=interval_s,
                report_interval_s=report_interval_s)
