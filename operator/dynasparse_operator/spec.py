"""Typed view of an AdaptiveModel's spec, with the CRD's defaults applied.

`parse_spec(body_spec)` is pure; handlers and the daemon call it once per event and pass the
result to the pure layers (manifests, control law). Field names mirror the CRD
(charts/dynasparse/crds/adaptivemodels.yaml) in snake_case. The API server already validated the
body; the checks here only guard callers that build a spec by hand (tests, the demo).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from dynasparse_operator.errors import UserError


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    """The worker container."""

    image: str = ""  # empty: the operator's configured default
    image_pull_policy: str = ""
    gpus: int = 1
    memory: str = ""
    cpu: str = ""
    extra_args: tuple[str, ...] = ()
    drain_grace_s: int = 60


@dataclasses.dataclass(frozen=True)
class SloSpec:
    """p95 targets in ms; 0 means no target on that axis."""

    ttft_p95_ms: float = 0.0
    inter_token_p95_ms: float = 0.0


@dataclasses.dataclass(frozen=True)
class QualitySpec:
    """Exactly one of max_loss (expected loss allowed) and min_budget is set."""

    max_loss: float | None = None
    min_budget: float | None = None


@dataclasses.dataclass(frozen=True)
class ControlSpec:
    """Loop behaviour."""

    interval_s: float = 2.0
    responsiveness: float = 0.5
    max_budget: float = 1.0
    replace_disrupted_pods: bool | None = None  # None: when the notice outlasts a pod's start


@dataclasses.dataclass(frozen=True)
class SchedulingSpec:
    node_selector: Mapping[str, str] = dataclasses.field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    affinity: Mapping[str, Any] | None = None
    priority_class_name: str = ""


@dataclasses.dataclass(frozen=True)
class SignalOverrides:
    """Per-model overrides of SignalSettings lists; None keeps the operator's setting."""

    pressure_conditions: tuple[str, ...] | None = None
    pressure_taints: tuple[str, ...] | None = None
    disruption_taints: tuple[str, ...] | None = None
    disruption_labels: tuple[str, ...] | None = None


AUTH_API_KEY = "APIKey"
AUTH_DISABLED = "Disabled"
DEFAULT_API_KEY_KEY = "api-key"


@dataclasses.dataclass(frozen=True)
class AuthSpec:
    """Who may call the workers' HTTP API. `APIKey` (the default): a bearer key from a Secret,
    the operator's own `<name>-api-key` unless `secret_name` names one the user brings;
    `Disabled`: no key, only the NetworkPolicy guards the port (an explicit choice)."""

    mode: str = AUTH_API_KEY
    secret_name: str = ""
    secret_key: str = DEFAULT_API_KEY_KEY


@dataclasses.dataclass(frozen=True)
class AdaptiveModelSpec:
    model: str
    slo: SloSpec
    quality: QualitySpec
    calibration: str = ""
    replicas: int = 1
    worker: WorkerSpec = WorkerSpec()
    control: ControlSpec = ControlSpec()
    scheduling: SchedulingSpec = SchedulingSpec()
    signals: SignalOverrides = SignalOverrides()
    auth: AuthSpec = AuthSpec()


def _num(data: Mapping[str, Any], key: str, default: float | None) -> float | None:
    value = data.get(key)
    return default if value is None else float(value)


def _strs(data: Mapping[str, Any], key: str) -> tuple[str, ...] | None:
    value = data.get(key)
    return None if value is None else tuple(str(v) for v in value)


def parse_spec(spec: Mapping[str, Any]) -> AdaptiveModelSpec:
    """Body `spec` (already defaulted by the API server, or not) -> AdaptiveModelSpec."""
    worker = spec.get("worker") or {}
    slo = spec.get("slo") or {}
    quality = spec.get("quality") or {}
    control = spec.get("control") or {}
    scheduling = spec.get("scheduling") or {}
    signals = spec.get("signals") or {}
    auth = spec.get("auth") or {}
    secret = auth.get("apiKeySecret") or {}
    parsed = AdaptiveModelSpec(
        model=str(spec.get("model") or ""),
        calibration=str(spec.get("calibration") or ""),
        replicas=int(spec.get("replicas", 1)),
        worker=WorkerSpec(
            image=str(worker.get("image") or ""),
            image_pull_policy=str(worker.get("imagePullPolicy") or ""),
            gpus=int(worker.get("gpus", 1)),
            memory=str(worker.get("memory") or ""),
            cpu=str(worker.get("cpu") or ""),
            extra_args=tuple(str(a) for a in worker.get("extraArgs") or ()),
            drain_grace_s=int(worker.get("drainGraceSeconds", 60)),
        ),
        slo=SloSpec(ttft_p95_ms=_num(slo, "ttftP95Ms", 0.0),
                    inter_token_p95_ms=_num(slo, "interTokenP95Ms", 0.0)),
        quality=QualitySpec(max_loss=_num(quality, "maxLoss", None),
                            min_budget=_num(quality, "minBudget", None)),
        control=ControlSpec(
            interval_s=float(control.get("intervalSeconds", 2.0)),
            responsiveness=float(control.get("responsiveness", 0.5)),
            max_budget=float(control.get("maxBudget", 1.0)),
            replace_disrupted_pods=(None if control.get("replaceDisruptedPods") is None
                                    else bool(control["replaceDisruptedPods"])),
        ),
        scheduling=SchedulingSpec(
            node_selector=dict(scheduling.get("nodeSelector") or {}),
            tolerations=tuple(scheduling.get("tolerations") or ()),
            affinity=scheduling.get("affinity"),
            priority_class_name=str(scheduling.get("priorityClassName") or ""),
        ),
        signals=SignalOverrides(
            pressure_conditions=_strs(signals, "pressureConditions"),
            pressure_taints=_strs(signals, "pressureTaints"),
            disruption_taints=_strs(signals, "disruptionTaints"),
            disruption_labels=_strs(signals, "disruptionLabels"),
        ),
        auth=AuthSpec(mode=str(auth.get("mode") or AUTH_API_KEY),
                      secret_name=str(secret.get("name") or ""),
                      secret_key=str(secret.get("key") or DEFAULT_API_KEY_KEY)),
    )
    check_spec(parsed)
    return parsed


def check_spec(spec: AdaptiveModelSpec) -> None:
    """The CRD's rules, for specs that did not come through the API server."""
    if not spec.model:
        raise UserError("spec.model is required: a hub id, a path in the image, or 'default'")
    if spec.slo.ttft_p95_ms <= 0 and spec.slo.inter_token_p95_ms <= 0:
        raise UserError("set spec.slo.ttftP95Ms, spec.slo.interTokenP95Ms, or both")
    if (spec.quality.max_loss is None) == (spec.quality.min_budget is None):
        raise UserError("set exactly one of spec.quality.maxLoss and spec.quality.minBudget")
    if spec.quality.min_budget is not None and not 0 < spec.quality.min_budget <= 1:
        raise UserError("spec.quality.minBudget must be in (0, 1]")
    if not 0 < spec.control.max_budget <= 1:
        raise UserError("spec.control.maxBudget must be in (0, 1]")
    if not 0.05 <= spec.control.responsiveness <= 1:
        raise UserError("spec.control.responsiveness must be in [0.05, 1]")
    if spec.control.interval_s < 0.2:
        raise UserError("spec.control.intervalSeconds must be at least 0.2")
    if spec.auth.mode not in (AUTH_API_KEY, AUTH_DISABLED):
        raise UserError(f"spec.auth.mode must be {AUTH_API_KEY} or {AUTH_DISABLED}")
    if spec.auth.mode == AUTH_DISABLED and spec.auth.secret_name:
        raise UserError("spec.auth.apiKeySecret needs spec.auth.mode APIKey (or drop the secret)")
