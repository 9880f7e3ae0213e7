"""Operator-wide settings: signal keys, loop defaults, worker pods and what a model may ask of them,
NetworkPolicy peers, PKI names, API timeouts.

Loaded once by `commands/run.py` (`load_settings()`), then passed down explicitly; nothing reads a
module global. Sources, later wins: the defaults below, the YAML file named by `DYNASPARSE_CONFIG`
(keys in camelCase, nested like the dataclasses: `signals.disruptionTaints`, `worker.controlPort`...),
then the individual environment variables listed in `ENV_VARS`. The chart renders the YAML file
from values.yaml; docs/DESIGN.md "Operator configuration" lists the same names.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from dynasparse_operator.errors import UserError

CONFIG_ENV = "DYNASPARSE_CONFIG"


@dataclasses.dataclass
class SignalSettings:
    """Which node and pod facts mean pressure, disruption or cordon (brief §3)."""

    pressure_conditions: list[str] = dataclasses.field(
        default_factory=lambda: ["MemoryPressure", "DiskPressure", "PIDPressure"])
    """Node conditions that, when True, lower the ceiling of the pods on that node."""

    pressure_taints: list[str] = dataclasses.field(default_factory=lambda: [
        "node.kubernetes.io/memory-pressure", "node.kubernetes.io/disk-pressure",
        "node.kubernetes.io/pid-pressure"])
    """Taint keys that mean the same as a pressure condition."""

    unhealthy_taints: list[str] = dataclasses.field(default_factory=lambda: [
        "node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable",
        "node.kubernetes.io/out-of-service"])
    """Taint keys (with a node condition Ready other than True) that mean the node's pods are being lost."""

    cordon_taints: list[str] = dataclasses.field(
        default_factory=lambda: ["node.kubernetes.io/unschedulable"])
    """Taint keys that mean cordoned (as does `spec.unschedulable: true`)."""

    disruption_taints: list[str] = dataclasses.field(default_factory=lambda: [
        "aws-node-termination-handler/spot-itn",
        "aws-node-termination-handler/rebalance-recommendation",
        "aws-node-termination-handler/scheduled-maintenance",
        "aws-node-termination-handler/asg-lifecycle-termination",
        "karpenter.sh/disrupted", "karpenter.sh/disruption",
        "cloud.google.com/impending-node-termination",
        "remediator.kubernetes.azure.com/unschedulable",
        "ToBeDeletedByClusterAutoscaler",
        "node.cloudprovider.kubernetes.io/shutdown"])
    """Taint keys that announce a node is about to go away (spot notice, drain, scale-down)."""

    disruption_labels: list[str] = dataclasses.field(
        default_factory=lambda: ["cloud.google.com/scheduled-maintenance-time"])
    """Node label keys whose presence announces maintenance."""

    spot_labels: list[str] = dataclasses.field(default_factory=lambda: [
        "karpenter.sh/capacity-type=spot", "cloud.google.com/gke-spot=true",
        "kubernetes.azure.com/scalesetpriority=spot", "eks.amazonaws.com/capacityType=SPOT"])
    """`key=value` node labels that mark a spot node (shown in status; no control action)."""

    disruption_pod_condition: str = "DisruptionTarget"
    """Pod condition type that marks a pod about to be evicted or preempted."""

    notice_lead_s: dict[str, float] = dataclasses.field(default_factory=lambda: {
        "aws-node-termination-handler/spot-itn": 120.0,
        "aws-node-termination-handler/rebalance-recommendation": 120.0,
        "aws-node-termination-handler/scheduled-maintenance": 120.0,
        "aws-node-termination-handler/asg-lifecycle-termination": 120.0,
        "cloud.google.com/impending-node-termination": 30.0,
        "remediator.kubernetes.azure.com/unschedulable": 30.0})
    """Seconds between a disruption notice (by key) and the node going away; an unset
    replaceDisruptedPods replaces draining pods when this is longer than a pod takes to start."""


@dataclasses.dataclass
class ControlSettings:
    """Defaults of the closed loop; an AdaptiveModel's spec.control overrides the first two."""

    interval_s: float = 2.0
    """Control period when the spec does not set control.intervalSeconds."""

    report_interval_s: float = 0.5
    """Report interval asked of the workers (ControlMessage.report_interval_s)."""

    stale_after_s: float = 3.0
    """A pod whose last report is older than this is treated as a lost stream."""

    settle_s: float = 1.0
    """After a budget change, how long until the workers' reports reflect it (their latency
    window plus one report interval): no further cut before then."""

    setpoint_ratio: float = 0.8
    """The loop steers the worst pod's p95 towards this fraction of the SLO."""

    deadband: float = 0.15
    """Log-space width of the hold band above the setpoint (twice this below it)."""

    pressure_ceiling_factor: float = 0.75
    """Node pressure multiplies that node's pods' ceiling by this."""

    min_samples: int = 5
    """A report with fewer latency samples than this says nothing about the SLO."""


@dataclasses.dataclass
class WorkerSettings:
    """How worker pods are rendered (manifests.py)."""

    image: str = "dynasparse:latest"
    """Worker image when the spec does not name one."""

    image_pull_policy: str = "IfNotPresent"
    """Pull policy when the spec does not name one."""

    http_port: int = 8000
    """OpenAI-compatible HTTP port of the worker (Service port `http`)."""

    control_port: int = 50051
    """gRPC control port of the worker (Service port `control`)."""

    tls_dir: str = "/etc/dynasparse/tls"
    """Where the worker cert Secret is mounted in the pod (`dynasparse serve --tls-dir`)."""

    service_account: str = ""
    """ServiceAccount for worker pods; empty uses the namespace default."""

    api_key_dir: str = "/etc/dynasparse/api-key"
    """Where the API-key Secret is mounted in the pod; the worker reads `<dir>/api-key`
    (DYNASPARSE_API_KEY_FILE) and re-reads it when the Secret changes."""

    cache_dir: str = "/var/cache/dynasparse"
    """Writable cache of the worker (dequantized models, calibration, Hugging Face and Triton
    caches): the root filesystem is read-only, so this is the `cacheVolume` mounted here."""

    cache_volume: dict = dataclasses.field(default_factory=lambda: {"emptyDir": {}})
    """Volume source behind `cache_dir` (a Kubernetes Volume without `name`): an emptyDir by
    default, a PersistentVolumeClaim or hostPath to keep dequantized models across restarts."""

    allowed_images: list = dataclasses.field(default_factory=list)
    """Images an AdaptiveModel may name: a pattern without tag or digest matches any tag or digest
    of that repository, `*` matches any characters. The default image (`image`) is always allowed;
    an empty list allows only its repository."""

    allowed_priority_classes: list = dataclasses.field(default_factory=list)
    """PriorityClass names an AdaptiveModel may ask for; empty allows none."""

    allowed_extra_args: list = dataclasses.field(default_factory=lambda: [
        "--device", "--max-queue", "--max-batch-size", "--max-seq-len", "--kv-tokens",
        "--queue-high", "--stream-lost-timeout", "--log-level", "--max-body-bytes",
        "--body-timeout", "--max-connections", "--keep-alive-timeout", "--metrics-auth"])
    """`dynasparse serve` flags an AdaptiveModel may add through worker.extraArgs (exact names;
    `--flag=value` and `--flag value` both count as `--flag`). Flags the operator sets itself
    (address, ports, TLS, API key, model) are never allowed here."""


@dataclasses.dataclass
class NetworkPolicySettings:
    """The NetworkPolicy the operator renders for each AdaptiveModel's worker pods."""

    enabled: bool = True
    """Render it (needs a CNI that enforces NetworkPolicy to have any effect)."""

    http_from: list = dataclasses.field(default_factory=lambda: [{"podSelector": {}}])
    """Peers (NetworkPolicyPeer list) allowed on the workers' HTTP port. The default,
    `[{podSelector: {}}]`, is every pod of the model's own namespace; an empty list closes the
    HTTP port to every pod (only what `http_from_everywhere` opens remains)."""

    http_from_everywhere: bool = False
    """Open the HTTP port to every source, in-cluster and outside; only when asked."""

    operator_labels: dict = dataclasses.field(default_factory=lambda: {
        "app.kubernetes.io/component": "operator", "app.kubernetes.io/part-of": "dynasparse"})
    """Labels of the operator's pods: together with the operator's namespace, the only peers
    allowed on the workers' control port."""


@dataclasses.dataclass
class KubeSettings:
    """The operator's own Kubernetes API calls."""

    request_timeout_s: float = 10.0
    """Longest time one API call may take (connect and read), so a stuck API server never stalls
    a control step."""


@dataclasses.dataclass
class GrpcSettings:
    """The operator's client side of the control streams."""

    connect_timeout_s: float = 3.0
    """How long one connection attempt may take."""

    backoff_initial_s: float = 0.2
    """First reconnect delay; doubles up to backoff_max_s."""

    backoff_max_s: float = 5.0
    """Longest reconnect delay."""


@dataclasses.dataclass
class PkiSettings:
    """The operator-owned certificate authority."""

    namespace: str = ""
    """Namespace of the CA Secret; empty uses the operator's own namespace (service-account file) or `default`."""

    ca_secret: str = "dynasparse-ca"
    """Name of the Secret holding the CA (`ca.crt`, `ca.key`)."""


@dataclasses.dataclass
class ServerSettings:
    """The operator's own endpoints and identity."""

    metrics_port: int = 9090
    """Prometheus metrics port (0 disables)."""

    health_port: int = 8080
    """kopf liveness endpoint port, path /healthz (0 disables)."""

    pod_name: str = ""
    """Operator pod name, sent as ControlMessage.sender."""

    namespace: str = ""
    """Operator's own namespace (downward API); the CA Secret lives there unless pki.namespace is set."""


@dataclasses.dataclass
class OperatorSettings:
    """Everything configurable about the operator."""

    signals: SignalSettings = dataclasses.field(default_factory=SignalSettings)
    control: ControlSettings = dataclasses.field(default_factory=ControlSettings)
    worker: WorkerSettings = dataclasses.field(default_factory=WorkerSettings)
    grpc: GrpcSettings = dataclasses.field(default_factory=GrpcSettings)
    pki: PkiSettings = dataclasses.field(default_factory=PkiSettings)
    server: ServerSettings = dataclasses.field(default_factory=ServerSettings)
    network_policy: NetworkPolicySettings = dataclasses.field(default_factory=NetworkPolicySettings)
    kube: KubeSettings = dataclasses.field(default_factory=KubeSettings)


# env var -> (section, field). Documented in docs/DESIGN.md "Operator configuration".
ENV_VARS: dict[str, tuple[str, str]] = {
    "DYNASPARSE_WORKER_IMAGE": ("worker", "image"),
    "DYNASPARSE_WORKER_IMAGE_PULL_POLICY": ("worker", "image_pull_policy"),
    "DYNASPARSE_WORKER_SERVICE_ACCOUNT": ("worker", "service_account"),
    "DYNASPARSE_WORKER_ALLOWED_IMAGES": ("worker", "allowed_images"),
    "DYNASPARSE_KUBE_TIMEOUT_S": ("kube", "request_timeout_s"),
    "DYNASPARSE_CONTROL_PORT": ("worker", "control_port"),
    "DYNASPARSE_WORKER_HTTP_PORT": ("worker", "http_port"),
    "DYNASPARSE_CONTROL_INTERVAL_S": ("control", "interval_s"),
    "DYNASPARSE_REPORT_INTERVAL_S": ("control", "report_interval_s"),
    "DYNASPARSE_CA_NAMESPACE": ("pki", "namespace"),
    "DYNASPARSE_CA_SECRET": ("pki", "ca_secret"),
    "DYNASPARSE_METRICS_PORT": ("server", "metrics_port"),
    "DYNASPARSE_HEALTH_PORT": ("server", "health_port"),
    "DYNASPARSE_POD_NAME": ("server", "pod_name"),
    "DYNASPARSE_POD_NAMESPACE": ("server", "namespace"),
    "DYNASPARSE_NOTICE_LEAD_SECONDS": ("signals", "notice_lead_s"),  # a JSON object
}


def _snake(name: str) -> str:
    name = re.sub(r"Seconds$", "_s", name)
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _coerce(value: Any, current: Any, where: str) -> Any:
    try:
        if isinstance(current, bool):
            return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
        if isinstance(current, int):
            return int(value)
        if isinstance(current, float):
            return float(value)
        if isinstance(current, dict):
            if isinstance(value, str):  # an environment variable holds the mapping as JSON
                value = json.loads(value)
            if not isinstance(value, Mapping):
                raise TypeError("not a mapping")
            return dict(value)
        if isinstance(current, list):
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            # NetworkPolicy peers and the like stay mappings; names become strings
            return [dict(v) if isinstance(v, Mapping) else str(v) for v in value]
        return str(value)
    except (TypeError, ValueError) as exc:
        raise UserError(f"operator setting {where}={value!r} is not a valid "
                        f"{type(current).__name__}; fix it in ${CONFIG_ENV} or the environment") from exc


def apply_mapping(settings: OperatorSettings, data: Mapping[str, Any], source: str) -> None:
    """Overlay a camelCase (or snake_case) nested mapping onto settings, rejecting unknown keys."""
    for section_key, values in (data or {}).items():
        section_name = _snake(section_key)
        section = getattr(settings, section_name, None)
        if section is None or not dataclasses.is_dataclass(section) or not isinstance(values, Mapping):
            raise UserError(f"unknown operator setting section {section_key!r} in {source}")
        for key, value in values.items():
            field = _snake(key)
            if not hasattr(section, field):
                raise UserError(f"unknown operator setting {section_key}.{key} in {source}")
            setattr(section, field, _coerce(value, getattr(section, field), f"{section_key}.{key}"))


def load_settings(environ: Mapping[str, str] | None = None) -> OperatorSettings:
    """Defaults, then the YAML file named by DYNASPARSE_CONFIG, then the env vars of ENV_VARS."""
    env = os.environ if environ is None else environ
    settings = OperatorSettings()
    path = env.get(CONFIG_ENV)
    if path:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise UserError(f"cannot read {CONFIG_ENV}={path}: {exc}") from exc
        if not isinstance(data, Mapping):
            raise UserError(f"{CONFIG_ENV}={path} must hold a YAML mapping")
        apply_mapping(settings, data, path)
    for var, (section, field) in ENV_VARS.items():
        if env.get(var, "") != "":
            target = getattr(settings, section)
            setattr(target, field, _coerce(env[var], getattr(target, field), var))
    _check_notice_leads(settings.signals.notice_lead_s)
    return settings


def _check_notice_leads(leads: dict[str, Any]) -> None:
    for key, value in list(leads.items()):
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            seconds = -1.0
        if not seconds >= 0 or seconds == float("inf"):
            raise UserError(f"operator setting signals.noticeLeadSeconds[{key!r}]={value!r} must "
                            "be a number of seconds >= 0; fix it in the chart's noticeLeadSeconds "
                            "or DYNASPARSE_NOTICE_LEAD_SECONDS")
        leads[key] = seconds
