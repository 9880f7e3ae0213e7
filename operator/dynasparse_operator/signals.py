"""Node and pod objects -> the facts the control law feeds forward: pressure, disruption, cordon.

Pure: takes plain dicts (as kopf hands them, or `to_dict()` of kubernetes client models) and the
configured keys (settings.SignalSettings, overridable per model through spec.signals). Called by
the daemon each decision, and by handlers.py to decide whether a node event is worth waking the
daemons of the models with pods there.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping

from dynasparse_operator.law_types import PodFacts
from dynasparse_operator.settings import SignalSettings
from dynasparse_operator.spec import SignalOverrides


@dataclasses.dataclass(frozen=True)
class NodeFacts:
    """What matters about one node."""

    name: str
    pressure: tuple[str, ...] = ()  # conditions/taints, e.g. "MemoryPressure"
    disruption: tuple[str, ...] = ()  # notice keys, e.g. "aws-node-termination-handler/spot-itn"
    cordoned: bool = False
    unhealthy: tuple[str, ...] = ()  # Ready not True, or not-ready/unreachable taints
    spot: bool = False

    @property
    def losing_pods(self) -> tuple[str, ...]:
        """Why this node's pods are going away (notice first, then cordon, then health)."""
        return self.disruption + (("cordoned",) if self.cordoned else ()) + self.unhealthy


def effective_signals(settings: SignalSettings, overrides: SignalOverrides) -> SignalSettings:
    """The operator's keys with a model's spec.signals lists substituted where given."""
    changes = {f.name: list(getattr(overrides, f.name)) for f in dataclasses.fields(overrides)
               if getattr(overrides, f.name) is not None}
    return dataclasses.replace(settings, **changes)


def node_facts(node: Mapping[str, Any], keys: SignalSettings) -> NodeFacts:
    """Read one Node object."""
    meta = node.get("metadata") or {}
    spec = node.get("spec") or {}
    status = node.get("status") or {}
    labels = meta.get("labels") or {}
    taints = [t.get("key", "") for t in spec.get("taints") or () if t]
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or () if c}

    pressure = [c for c in keys.pressure_conditions if conditions.get(c) == "True"]
    pressure += [t for t in taints if t in keys.pressure_taints and t not in pressure]
    disruption = [t for t in taints if t in keys.disruption_taints]
    disruption += [lbl for lbl in keys.disruption_labels if lbl in labels]
    cordoned = bool(spec.get("unschedulable")) or any(t in keys.cordon_taints for t in taints)
    unhealthy = [t for t in taints if t in keys.unhealthy_taints]
    if "Ready" in conditions and conditions["Ready"] != "True" and not unhealthy:
        unhealthy.append(f"Ready={conditions['Ready']}")
    spot = any(labels.get(k) == v for k, _, v in (s.partition("=") for s in keys.spot_labels))
    return NodeFacts(name=meta.get("name", ""), pressure=tuple(pressure),
                     disruption=tuple(disruption), cordoned=cordoned, unhealthy=tuple(unhealthy),
                     spot=spot)


def pod_disruption(pod: Mapping[str, Any], keys: SignalSettings) -> str | None:
    """The pod's own `DisruptionTarget` condition (eviction or preemption pending), with its reason."""
    for cond in (pod.get("status") or {}).get("conditions") or ():
        if cond.get("type") == keys.disruption_pod_condition and cond.get("status") == "True":
            reason = cond.get("reason")
            return f"{keys.disruption_pod_condition}({reason})" if reason else keys.disruption_pod_condition
    return None


def pod_ready(pod: Mapping[str, Any]) -> bool:
    """Running, has an IP, condition Ready=True, and not being deleted."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    if meta.get("deletionTimestamp") or status.get("phase") != "Running" or not status.get("podIP"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in status.get("conditions") or ())


def pod_facts(pods: Iterable[Mapping[str, Any]], nodes: Mapping[str, NodeFacts],
              keys: SignalSettings) -> list[PodFacts]:
    """PodFacts for the pods the control law should steer (ready, or already draining on notice).

    A pod being deleted is left out: it is already gone from the Service's endpoints.
    """
    facts = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue
        node_name = (pod.get("spec") or {}).get("nodeName") or ""
        node = nodes.get(node_name, NodeFacts(node_name))
        losing = node.losing_pods
        own = pod_disruption(pod, keys)
        disruption = ((own,) if own else ()) + losing
        if not pod_ready(pod) and not disruption:
            continue
        facts.append(PodFacts(name=meta.get("name", ""), node=node_name, pressure=node.pressure,
                              disruption=disruption))
    return facts
