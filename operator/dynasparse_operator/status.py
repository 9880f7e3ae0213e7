"""Loop state -> the AdaptiveModel's status patch, conditions and Event messages.

Pure: daemon.py gathers a `StatusInput` after each decision and applies what `status_patch`
returns as one merge patch of the status subresource; `event_for` says which decisions become
Events. Conditions keep their lastTransitionTime while their status does not change.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any, Mapping, Sequence

from dynasparse_operator.law_types import Decision, LawState, PodFacts, PodReport
from dynasparse_proto.contract import Mode

CONDITION_TYPES = ("Ready", "SLOMet", "Degraded", "Disrupted")


@dataclasses.dataclass(frozen=True)
class StatusInput:
    generation: int
    desired_replicas: int
    existing_pods: int
    ready_pods: int
    selector: str
    decision: Decision | None
    pods: Sequence[PodFacts]
    reports: Mapping[str, PodReport]
    connected: Mapping[str, bool]
    ttft_slo_ms: float
    epoch: int = 0
    sequence: int = 0
    surge_replicas: int = 0
    previous_conditions: Sequence[Mapping[str, Any]] = ()
    rejected: str = ""  # why the operator refused the spec (status.specRejected), if it did
    now: dt.datetime = dataclasses.field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))


def _iso(at: dt.datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(previous: Mapping[str, Mapping[str, Any]], kind: str, ok: bool | None, reason: str,
               message: str, generation: int, now: dt.datetime) -> dict[str, Any]:
    status = "Unknown" if ok is None else ("True" if ok else "False")
    before = previous.get(kind) or {}
    since = before.get("lastTransitionTime") if before.get("status") == status else None
    return {"type": kind, "status": status, "reason": reason, "message": message,
            "observedGeneration": generation, "lastTransitionTime": since or _iso(now)}


def conditions(inp: StatusInput) -> list[dict[str, Any]]:
    prev = {c.get("type"): c for c in inp.previous_conditions}
    d = inp.decision
    gen, now = inp.generation, inp.now
    ready = inp.ready_pods >= inp.desired_replicas and (inp.ready_pods > 0 or inp.desired_replicas == 0)
    if inp.rejected:
        out = [_condition(prev, "Ready", False, "SpecRejected", inp.rejected, gen, now)]
    else:
        out = [_condition(prev, "Ready", ready, "PodsReady" if ready else "PodsNotReady",
                          f"{inp.ready_pods}/{inp.desired_replicas} worker pods ready", gen, now)]
    if d is None or d.worst_ratio is None:
        out.append(_condition(prev, "SLOMet", None, "NoReports",
                              "no latency reports with enough samples yet", gen, now))
    else:
        met = d.worst_ratio <= 1.0
        out.append(_condition(prev, "SLOMet", met, "WithinSLO" if met else "SLOViolated",
                              d.observation or d.reason, gen, now))
    lost = sorted(p.name for p in inp.pods
                  if not p.disruption and not inp.connected.get(p.name, False))
    at_floor = d is not None and d.worst_ratio is not None and d.worst_ratio > 1.0 \
        and d.to_budget <= d.floor + 1e-9
    pressured = sorted({p.node for p in inp.pods if p.pressure})
    if d is not None and d.problems:
        degraded = _condition(prev, "Degraded", True, "InvalidQualityBounds",
                              "; ".join(d.problems), gen, now)
    elif at_floor:
        degraded = _condition(prev, "Degraded", True, "AtQualityFloor",
                              f"budget at the quality floor {d.floor:.2f} and p95 still over the "
                              "SLO: add replicas or relax the SLO", gen, now)
    elif d is not None and d.overloaded:
        degraded = _condition(prev, "Degraded", True, "LoadBeyondFloor",
                              f"{d.overloaded}: add replicas or relax the SLO", gen, now)
    elif lost:
        degraded = _condition(prev, "Degraded", True, "StreamLost",
                              f"no control stream to {', '.join(lost)}", gen, now)
    elif pressured:
        degraded = _condition(prev, "Degraded", True, "NodePressure",
                              f"node pressure on {', '.join(pressured)}: ceilings lowered", gen, now)
    else:
        degraded = _condition(prev, "Degraded", False, "Healthy", "all pods steered normally", gen, now)
    out.append(degraded)
    draining = [p for p in inp.pods if p.disruption]
    if draining:
        msg = "; ".join(f"{p.name} on {p.node or '?'}: {p.disruption[0]}" for p in draining)
        out.append(_condition(prev, "Disrupted", True, "Draining", msg, gen, now))
    else:
        out.append(_condition(prev, "Disrupted", False, "NoNotices", "no disruption notices", gen, now))
    return out


def _pod_entry(pod: PodFacts, inp: StatusInput) -> dict[str, Any]:
    d = inp.decision
    cmd = d.commands.get(pod.name) if d else None
    rep = inp.reports.get(pod.name)
    entry: dict[str, Any] = {"name": pod.name, "node": pod.node}
    if cmd:
        entry.update(targetBudget=round(cmd.target_budget, 4), floor=round(cmd.floor, 4),
                     ceiling=round(cmd.ceiling, 4), mode=cmd.mode, reason=cmd.reason)
    if pod.disruption or (cmd and cmd.mode is Mode.DRAIN):
        entry["state"] = "Draining"
    elif inp.connected.get(pod.name):
        entry["state"] = "Steered"
    else:
        entry["state"] = "NoStream"
    if rep:
        entry.update(budget=round(rep.applied_budget, 4), ttftP95Ms=round(rep.ttft_p95_ms, 1),
                     interTokenP95Ms=round(rep.inter_token_p95_ms, 2), queueDepth=rep.queue_depth)
    return entry


def status_patch(inp: StatusInput) -> dict[str, Any]:
    """The whole status we own, as one merge patch."""
    d = inp.decision
    reps = [inp.reports[p.name] for p in inp.pods if p.name in inp.reports and not p.disruption
            and inp.reports[p.name].samples > 0]  # an empty window says nothing about latency
    worst_ttft = max((r.ttft_p95_ms for r in reps), default=None)
    worst_itl = max((r.inter_token_p95_ms for r in reps), default=None)
    loss = max((inp.reports[p.name].expected_loss for p in inp.pods
                if p.name in inp.reports and not p.disruption), default=None)
    status: dict[str, Any] = {
        "observedGeneration": inp.generation,
        "replicas": inp.existing_pods,
        "readyReplicas": inp.ready_pods,
        "selector": inp.selector,
        "readyText": f"{inp.ready_pods}/{inp.desired_replicas}",
        "ttftSloText": f"{inp.ttft_slo_ms:.0f}ms" if inp.ttft_slo_ms else "-",
        "p95TtftText": f"{worst_ttft:.0f}ms" if worst_ttft is not None else "-",
        "budgetText": f"{d.to_budget:.2f}" if d else "-",
        "qualityLossText": f"{loss:.3f}" if loss is not None else "-",
        "conditions": conditions(inp),
        "pods": [_pod_entry(p, inp) for p in sorted(inp.pods, key=lambda p: p.name)],
        "epoch": inp.epoch,
        "sequence": inp.sequence,
        "surgeReplicas": inp.surge_replicas,
    }
    if worst_ttft is not None:
        status["p95TtftMs"] = round(worst_ttft, 1)
    if worst_itl is not None:
        status["p95InterTokenMs"] = round(worst_itl, 2)
    if loss is not None:
        status["qualityLoss"] = round(loss, 5)
    if d:
        status.update(budget=round(d.to_budget, 4), floor=round(d.floor, 4),
                      ceiling=round(d.ceiling, 4))
        if d.changed:
            status["lastDecision"] = {"time": _iso(inp.now), "from": round(d.from_budget, 4),
                                      "to": round(d.to_budget, 4), "reason": d.reason}
    return status


def event_for(decision: Decision) -> tuple[str, str, str] | None:
    """(type, reason, message) of the Event a budget decision deserves, or None."""
    if not decision.changed:
        return None
    if decision.kind == "disruption":
        return "Warning", "Disruption", decision.reason
    if decision.kind in ("slo-violation", "panic"):  # misses measured, or an arrival jump
        return "Warning", "BudgetLowered", decision.reason
    if decision.kind == "bounds":
        return "Normal", "BudgetBounded", decision.reason
    if decision.to_budget < decision.from_budget:
        return "Normal", "BudgetLowered", decision.reason
    return "Normal", "BudgetRaised", decision.reason


def resume_budget(status: Mapping[str, Any] | None, default: float = 1.0) -> float:
    """The budget to start from after an operator restart: status.budget, else lastDecision.to."""
    status = status or {}
    for value in (status.get("budget"), (status.get("lastDecision") or {}).get("to")):
        if isinstance(value, (int, float)) and 0 < value <= 1:
            return float(value)
    return default


def resume_state(status: Mapping[str, Any] | None) -> LawState:
    """Law state after an operator restart: the budget, and the pods already drained (so their
    capacity is not subtracted from the survivors' budget a second time)."""
    draining = frozenset(p.get("name", "") for p in (status or {}).get("pods") or ()
                         if p.get("state") == "Draining")
    return LawState(budget=resume_budget(status), draining=draining)
