"""AdaptiveModel spec -> the objects it owns: worker Deployment, Service, worker TLS Secret.

Pure: returns plain dicts; handlers.py applies them (create or patch) and never edits them by
hand. Every object carries an owner reference to the AdaptiveModel, so deleting it deletes them.
Names: Deployment `<name>-worker`, Service `<name>` (ports `http`, `control`), Secret
`<name>-worker-tls` (`ca.crt`, `server.crt`, `server.key`, as `dynasparse serve --tls-dir` reads);
api_key.py and network_policy.py render the API-key Secret and the NetworkPolicy.

Worker pods run under the restricted profile: non-root, read-only root filesystem (writable
emptyDirs for /tmp and the caches), no capabilities, no privilege escalation, the runtime's
default seccomp profile and no service-account token (workers never call the API server).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from dynasparse_operator.settings import WorkerSettings
from dynasparse_operator.spec import AUTH_API_KEY, AdaptiveModelSpec

GROUP = "dynasparse.io"
VERSION = "v1alpha1"
KIND = "AdaptiveModel"
PLURAL = "adaptivemodels"
MODEL_LABEL = "dynasparse.io/model"
COMPONENT_LABELS = {"app.kubernetes.io/component": "worker", "app.kubernetes.io/part-of": "dynasparse"}
SPEC_HASH_ANNOTATION = "dynasparse.io/spec-hash"
# The model's name is its Service's name (a DNS-1035 label) and the value of the labels above
# (at most 63 characters); the suffixed names (`-worker`, `-worker-tls`, `-api-key`) are DNS
# subdomains (253), so the label limit is the binding one. The CRD enforces the same rule.
MAX_NAME_LENGTH = 63
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
CERT_COMMON_NAME_MAX = 64  # X.509 upper bound on a common name
API_KEY_FILE = "api-key"  # file name of the key inside WorkerSettings.api_key_dir


@dataclasses.dataclass(frozen=True)
class Owner:
    """The AdaptiveModel that owns what we render."""

    name: str
    namespace: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": self.name,
                "uid": self.uid, "controller": True, "blockOwnerDeletion": True}


def deployment_name(model: str) -> str:
    return f"{model}-worker"


def service_name(model: str) -> str:
    return model


def tls_secret_name(model: str) -> str:
    return f"{model}-worker-tls"


def selector(model: str) -> dict[str, str]:
    """Labels that select this model's worker pods (also `status.selector` for the scale subresource)."""
    return {MODEL_LABEL: model, **COMPONENT_LABELS}


def selector_string(model: str) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector(model).items()))


def worker_common_name(owner: Owner) -> str:
    """Subject common name of the worker certificate: informative only (the operator verifies the
    DNS names), cut to the X.509 limit so that long model and namespace names still get one."""
    return f"{owner.name}.{owner.namespace} worker"[:CERT_COMMON_NAME_MAX]


def worker_dns_names(owner: Owner) -> tuple[str, ...]:
    """Names in the worker certificate; the operator verifies the first one (target name override)."""
    svc = service_name(owner.name)
    return (f"{svc}.{owner.namespace}.svc", f"{svc}.{owner.namespace}.svc.cluster.local", svc)


def owned_metadata(name: str, owner: Owner, extra_labels: Mapping[str, str] | None = None) -> dict:
    labels = {"app.kubernetes.io/name": "dynasparse-worker", "app.kubernetes.io/instance": owner.name,
              "app.kubernetes.io/managed-by": "dynasparse-operator", **selector(owner.name)}
    labels.update(extra_labels or {})
    return {"name": name, "namespace": owner.namespace, "labels": labels,
            "ownerReferences": [owner.reference()]}


READINESS_PERIOD_S = 2
READINESS_FAILURES = 2
# A draining worker reports not-ready at once, but the kubelet needs up to period × failures (plus
# one period of jitter) to see it and the endpoints/proxies a moment more; until then clients are
# still routed here, so the worker keeps admitting for this long instead of refusing them.
DEREGISTER_DELAY_S = READINESS_PERIOD_S * (READINESS_FAILURES + 1) + 2


def worker_args(spec: AdaptiveModelSpec, settings: WorkerSettings) -> list[str]:
    """`dynasparse serve ...` for one worker pod."""
    args = ["serve", "--model", spec.model, "--host", "$(POD_IP)", "--port", str(settings.http_port),
            "--control-port", str(settings.control_port), "--tls-dir", settings.tls_dir,
            "--pod-name", "$(POD_NAME)", "--drain-grace", str(spec.worker.drain_grace_s),
            "--deregister-delay", str(DEREGISTER_DELAY_S)]
    # No calibration named: the worker's own ("auto": the artifact cached for its model, made once).
    args += ["--calibration", spec.calibration or "auto"]
    return args + list(spec.worker.extra_args)


def _resources(spec: AdaptiveModelSpec) -> dict[str, Any]:
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if spec.worker.gpus:
        limits["nvidia.com/gpu"] = requests["nvidia.com/gpu"] = str(spec.worker.gpus)
    if spec.worker.memory:
        limits["memory"] = requests["memory"] = spec.worker.memory
    if spec.worker.cpu:
        requests["cpu"] = spec.worker.cpu
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def _cpu_threads_env() -> list[dict[str, Any]]:
    """torch sizes its CPU thread pool from OMP_NUM_THREADS, else from every core of the node; a
    pod that asked for N cores must use N threads, or pods sharing a node oversubscribe it (the
    OpenMP threads spin against each other and CPU decode slows many times over)."""
    return [{"name": "OMP_NUM_THREADS", "valueFrom": {"resourceFieldRef": {
        "containerName": "worker", "resource": "requests.cpu", "divisor": "1"}}}]


def _cache_env(settings: WorkerSettings) -> list[dict[str, Any]]:
    """Every cache the worker (and the libraries it loads) writes goes to the cache volume, and
    temporary files to /tmp: nothing else on the read-only root filesystem is writable."""
    cache = settings.cache_dir
    return [{"name": "DYNASPARSE_CACHE_DIR", "value": cache},
            {"name": "HF_HOME", "value": f"{cache}/huggingface"},
            {"name": "TRITON_CACHE_DIR", "value": f"{cache}/triton"},
            {"name": "TORCHINDUCTOR_CACHE_DIR", "value": f"{cache}/torchinductor"},
            {"name": "TMPDIR", "value": "/tmp"}]


def _quality_env(spec: AdaptiveModelSpec) -> list[dict[str, Any]]:
    """The model's quality bound, so the worker holds it from its first request on, before the
    operator's first update reaches it and after a lost stream."""
    if spec.quality.min_budget is not None:
        return [{"name": "DYNASPARSE_MIN_BUDGET", "value": repr(float(spec.quality.min_budget))}]
    if spec.quality.max_loss is not None:
        return [{"name": "DYNASPARSE_MAX_LOSS", "value": repr(float(spec.quality.max_loss))}]
    return []


def _auth_env(spec: AdaptiveModelSpec, settings: WorkerSettings) -> list[dict[str, Any]]:
    if spec.auth.mode != AUTH_API_KEY:
        return []
    return [{"name": "DYNASPARSE_API_KEY_FILE", "value": f"{settings.api_key_dir}/{API_KEY_FILE}"}]


def _mounts(spec: AdaptiveModelSpec, settings: WorkerSettings) -> list[dict[str, Any]]:
    mounts = [{"name": "tls", "mountPath": settings.tls_dir, "readOnly": True},
              {"name": "tmp", "mountPath": "/tmp"},
              {"name": "cache", "mountPath": settings.cache_dir}]
    if spec.auth.mode == AUTH_API_KEY:
        mounts.append({"name": "api-key", "mountPath": settings.api_key_dir, "readOnly": True})
    return mounts


def _volumes(spec: AdaptiveModelSpec, owner: Owner, settings: WorkerSettings) -> list[dict[str, Any]]:
    volumes = [{"name": "tls", "secret": {"secretName": tls_secret_name(owner.name), "defaultMode": 0o440}},
               {"name": "tmp", "emptyDir": {}},
               {"name": "cache", **dict(settings.cache_volume)}]
    if spec.auth.mode == AUTH_API_KEY:
        # items: the key lands at a fixed file name whatever the Secret's key is; no subPath, so
        # the kubelet keeps updating the file when the Secret changes (the worker re-reads it)
        volumes.append({"name": "api-key", "secret": {
            "secretName": api_key_secret_name(owner.name, spec), "defaultMode": 0o440,
            "items": [{"key": spec.auth.secret_key, "path": API_KEY_FILE}]}})
    return volumes


def api_key_secret_name(model: str, spec: AdaptiveModelSpec) -> str:
    """The Secret holding the model's API key: the user's own, else the operator's `<name>-api-key`."""
    return spec.auth.secret_name or f"{model}-api-key"


RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                        "privileged": False, "runAsNonRoot": True,
                        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
RESTRICTED_POD = {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
                  "seccompProfile": {"type": "RuntimeDefault"}}


def _container(spec: AdaptiveModelSpec, owner: Owner, settings: WorkerSettings) -> dict[str, Any]:
    http = {"port": settings.http_port, "path": "/readyz"}
    env = [  # listen on the pod IP (the dev cluster's process kubelet needs it; right anywhere)
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "DYNASPARSE_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        *_cache_env(settings), *_auth_env(spec, settings), *_quality_env(spec),
    ]
    return {
        "name": "worker",
        "image": spec.worker.image or settings.image,
        "imagePullPolicy": spec.worker.image_pull_policy or settings.image_pull_policy,
        "args": worker_args(spec, settings),
        **({"env": env + _cpu_threads_env()} if spec.worker.cpu else {"env": env}),
        "ports": [{"name": "http", "containerPort": settings.http_port, "protocol": "TCP"},
                  {"name": "control", "containerPort": settings.control_port, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": http, "periodSeconds": READINESS_PERIOD_S,
                           "failureThreshold": READINESS_FAILURES},
        "livenessProbe": {"httpGet": {**http, "path": "/healthz"}, "periodSeconds": 10,
                          "failureThreshold": 6, "initialDelaySeconds": 30},
        "startupProbe": {"httpGet": {**http, "path": "/healthz"}, "periodSeconds": 5,
                         "failureThreshold": 120},
        "resources": _resources(spec),
        "volumeMounts": _mounts(spec, settings),
        "securityContext": dict(RESTRICTED_CONTAINER),
    }


def deployment(spec: AdaptiveModelSpec, owner: Owner, settings: WorkerSettings, *,
               surge_replicas: int = 0, spec_hash: str = "") -> dict[str, Any]:
    """The worker Deployment: rolls one pod at a time, never below the desired count."""
    pod_spec: dict[str, Any] = {
        "containers": [_container(spec, owner, settings)],
        "volumes": _volumes(spec, owner, settings),
        "terminationGracePeriodSeconds": DEREGISTER_DELAY_S + spec.worker.drain_grace_s + 5,
        "securityContext": dict(RESTRICTED_POD),
        "automountServiceAccountToken": False,  # workers never call the API server
    }
    if settings.service_account:
        pod_spec["serviceAccountName"] = settings.service_account
    sched = spec.scheduling
    if sched.node_selector:
        pod_spec["nodeSelector"] = dict(sched.node_selector)
    if sched.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in sched.tolerations]
    if sched.affinity:
        pod_spec["affinity"] = dict(sched.affinity)
    if sched.priority_class_name:
        pod_spec["priorityClassName"] = sched.priority_class_name
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": owned_metadata(deployment_name(owner.name), owner),
        "spec": {
            "replicas": spec.replicas + max(0, surge_replicas),
            "selector": {"matchLabels": selector(owner.name)},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": owned_metadata("", owner)["labels"],
                             "annotations": {SPEC_HASH_ANNOTATION: spec_hash} if spec_hash else {}},
                "spec": pod_spec,
            },
        },
    }


def service(owner: Owner, settings: WorkerSettings) -> dict[str, Any]:
    """ClusterIP Service in front of the ready workers: `http` for users, `control` for the operator."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": owned_metadata(service_name(owner.name), owner),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(owner.name),
            "ports": [{"name": "http", "port": settings.http_port, "targetPort": "http", "protocol": "TCP"},
                      {"name": "control", "port": settings.control_port, "targetPort": "control",
                       "protocol": "TCP"}],
        },
    }


def tls_secret(owner: Owner, ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> dict[str, Any]:
    """The worker's mTLS material, signed by the operator's CA (see pki.py)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": owned_metadata(tls_secret_name(owner.name), owner),
        "stringData": {"ca.crt": ca_pem.decode(), "server.crt": cert_pem.decode(),
                       "server.key": key_pem.decode()},
    }
