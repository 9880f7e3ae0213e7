"""The control law: reports + pod facts + parameters + previous state -> per-pod commands.

Pure (no kopf, kubernetes, grpc, clock): the operator's daemon calls `decide` every control
interval and at once when `needs_decision` says a fresh report calls for it; the local demo and the
simulation tests (tests/operator/) call it the same way. Types live in law_types.py.

The loop, in small steps:
1. `quality_floor`: spec.quality (minBudget, or maxLoss mapped through the workers' quality curve),
   never below the workers' calibration minimum; the ceiling (maxBudget) never below the floor.
   A worker's reported minimum raises only that worker's floor: the shared floor takes the lower
   median of the reported minimums, so one worker claiming 1.0 cannot force every pod dense.
2. Feed-forward on the workers' load signals (feed_forward.py): the largest budget whose measured
   speed-up lets every surviving pod start all but a small tail of its requests within the TTFT
   SLO; draining pods count as load, not capacity. It cuts at once past a band (or on a panic:
   an arrival jump, a request waiting past the SLO) and relaxes only to the lowest recommendation
   of the last window. Node pressure lowers that pod's ceiling.
3. Under that level, the miss trim (miss_trim.py) on the misses measured since the last change.
   Workers that report no load, or no measured speed curve, are steered by the p95 feedback
   (p95_feedback.py) instead, and their survivors' budget drops in proportion to the capacity lost
   on a disruption notice and does not relax until the draining pods are gone.
4. Commands: each pod gets min(budget, its ceiling), its bounds, a mode and the reason.

Inputs are sanitised once more here (wire.py already checks reports): a non-finite latency counts as
no sample and a non-finite budget in the state falls back to the ceiling, so the budget `decide`
returns is always finite and within [floor, ceiling].
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Mapping, Sequence

from dynasparse_operator import feed_forward, miss_trim
from dynasparse_operator.law_types import (Decision, LawParams, LawState, PodCommand, PodFacts,
                                           PodReport)
from dynasparse_operator.p95_feedback import (Feedback, cut_ratio, feedback, observation, slo_ratio,
                                              worst_report)
from dynasparse_proto.contract import Mode
from dynasparse_proto.quality import budget_for_loss, valid_curve


def quality_floor(params: LawParams, reports: Iterable[PodReport]) -> tuple[float, str]:
    """Lowest budget the spec allows (never above the ceiling `bounds` gives), and how it was found.

    The calibration minimum that joins it is the lower median of the workers' reports: workers
    enforce their own minimum anyway, so an outlier only raises its own pod's floor (`_commands`).
    """
    reports = list(reports)
    worker_min = _lower_median([_unit(r.min_budget, 0.0) for r in reports])
    min_budget = _unit(params.min_budget, None) if params.min_budget is not None else None
    if min_budget is not None:
        return max(min_budget, worker_min), f"minBudget {min_budget:.2f}"
    curve = next((c for r in reports if (c := valid_curve(r.quality_curve))), ())
    max_loss = params.max_loss
    if max_loss is None or not math.isfinite(max_loss) or not curve:
        return _max_budget(params), "no quality curve reported yet: holding the ceiling"
    floor = max(budget_for_loss(curve, max_loss), worker_min)
    return floor, f"maxLoss {max_loss:g} -> budget {floor:.2f}"


def bounds(params: LawParams, reports: Iterable[PodReport]) -> tuple[float, float, str, str]:
    """(floor, ceiling, how the floor was found, problem): the ceiling is maxBudget raised to the
    floor when the two conflict (quality wins over speed); `problem` says so, else ""."""
    floor, why = quality_floor(params, reports)
    ceiling = _max_budget(params)
    if ceiling >= floor - 1e-9:
        return floor, ceiling, why, ""
    return floor, floor, why, (
        f"maxBudget {ceiling:.2f} is below the quality floor {floor:.2f} ({why}): budgets stay at "
        f"{floor:.2f}; raise maxBudget or relax the quality bound")


def violates_slo(report: PodReport, params: LawParams) -> bool:
    """True when this report's p95 on an axis with enough samples is over its SLO."""
    ratio = slo_ratio(report, params)
    return ratio is not None and ratio > 1.0


def needs_decision(report: PodReport, params: LawParams) -> bool:
    """True when this report alone warrants running the law now instead of at the next tick: a
    p95 over the SLO, or a leading signal (a request waiting a good part of the TTFT SLO, first
    tokens confidently late since the last change, an arrival jump)."""
    if violates_slo(report, params):
        return True
    load, slo_s = report.load, params.ttft_slo_ms / 1000.0
    if load is None:
        return False
    aging = slo_s > 0 and load.oldest_waiting_s > params.aging_fraction * slo_s
    missing, _ = miss_trim.wilson(load.late_since_change, load.samples_since_change,
                                  params.miss_confidence_z)
    return aging or missing > miss_trim.ALLOWED_MISS or feed_forward.jumped(
        load.arrival_rate_short, load.arrival_rate_long, params.jump_sigmas)


def decide(reports: Mapping[str, PodReport], pods: Sequence[PodFacts], params: LawParams,
           state: LawState, now: float) -> Decision:
    """One control decision. `pods` are the ready worker pods; `reports` their latest reports."""
    floor, ceiling, floor_why, problem = bounds(params, reports.values())
    params = dataclasses.replace(params, max_budget=ceiling)
    if not math.isfinite(state.budget):
        state = dataclasses.replace(state, budget=ceiling)
    if not math.isfinite(state.last_error):
        state = dataclasses.replace(state, last_error=0.0)
    draining = [p for p in pods if p.disruption]
    survivors = [p for p in pods if not p.disruption]
    budget = min(max(state.budget, floor), ceiling)
    bounded = abs(budget - state.budget) > 1e-9  # the floor or ceiling moved past the budget
    events: list[str] = []

    view = feed_forward.recommend(pods, reports, params, floor, ceiling, now)
    level = state.load_budget if math.isfinite(state.load_budget) else (
        budget if view.budget is not None else ceiling)
    level = min(max(level, floor), ceiling)
    trim = min(1.0, budget / level) if level > 0 else 1.0  # the feedback's share, kept across moves
    level, recommendations, move = feed_forward.relax_level(level, view, state.recommendations,
                                                            params, now)
    budget, ff_reason, new_drains = _feed_forward_disruption(
        budget, floor, draining, survivors, state, absorb=view.budget is None)
    if ff_reason:
        events.append(ff_reason)
    if move:
        budget = min(max(level * trim, floor), ceiling)
        kind = "relax" if move == "relax" else ("panic" if view.panic else "load")
        why = f"{view.panic}: " if view.panic and move != "relax" else ""
        _, ratio, _, _ = worst_report(survivors, reports, params, now)
        fb = Feedback(budget, kind,
                      f"{why}{view.reason}; budget {state.budget:.2f} → {budget:.2f}",
                      min(state.last_error, -1e-6) if move == "tighten" else 0.0, ratio)
        if ff_reason:
            fb = dataclasses.replace(fb, reason=f"{ff_reason}; {fb.reason}")
    elif view.reported:
        calm = not (view.panic or view.late_in_flight)
        t = miss_trim.trim(budget, level, floor, survivors, reports, params,
                           now - state.last_change_at, calm, now)
        _, ratio, _, _ = worst_report(survivors, reports, params, now)
        seen = observation(survivors, reports, params, now)
        fb = Feedback(t.budget, "slo-violation" if t.kind == "tighten" else t.kind,
                      f"{seen}; {t.reason}" if seen else t.reason, 0.0, ratio, observation=seen)
    else:
        fb = feedback(budget, floor, survivors, reports, params, state, now)
        if draining and survivors and fb.budget > budget + 1e-9:
            # the survivors' p95 still holds samples from before the notice, and the draining
            # pods' load is not reported: the prior's cut holds until those pods are gone
            fb = dataclasses.replace(fb, budget=budget, kind="hold", reason=(
                f"{len(draining)} pod{'s' if len(draining) != 1 else ''} still draining: holding "
                f"the survivors' budget {budget:.2f} until they are gone ({fb.reason})"))
    if move:
        pass  # the feed-forward moved the level: its reason stands
    elif ff_reason and fb.kind in ("hold", "relax", "no-data"):
        fb = dataclasses.replace(fb, budget=budget, kind="disruption", reason=ff_reason,
                                 error=state.last_error)
    elif ff_reason:
        fb = dataclasses.replace(fb, reason=f"{ff_reason}; {fb.reason}")
    elif bounded and fb.kind in ("hold", "no-data"):
        fb = dataclasses.replace(fb, kind="bounds", reason=(
            f"bounds [{floor:.2f}, {params.max_budget:.2f}] ({floor_why}): "
            f"budget {state.budget:.2f} → {budget:.2f}"))
    budget = fb.budget if math.isfinite(fb.budget) else budget
    budget = min(max(budget, floor), ceiling)

    commands, pressure_events = _commands(pods, reports, budget, floor, params, fb.reason)
    events.extend(pressure_events)
    changed = abs(budget - state.budget) > 1e-9
    live = {p.name for p in pods}
    new_state = LawState(
        budget=budget,
        last_change_at=now if changed else state.last_change_at,
        last_error=fb.error if math.isfinite(fb.error) else 0.0,
        draining=frozenset((state.draining | new_drains) & live),
        cut_ratio=cut_ratio(state, fb, changed, budget),
        load_budget=level if view.reported or math.isfinite(state.load_budget) else math.nan,
        recommendations=recommendations,
    )
    return Decision(
        at=now, state=new_state, commands=commands, from_budget=state.budget, to_budget=budget,
        reason=fb.reason,
        kind=fb.kind, floor=floor, ceiling=params.max_budget, worst_ratio=fb.worst_ratio,
        ttft_p95_ms=fb.ttft_ms, inter_token_p95_ms=fb.itl_ms, observation=fb.observation,
        surge_replicas=len(draining) if params.replace_disrupted_pods else 0,
        events=tuple(events), problems=(problem,) if problem else (),
        overloaded=view.reason if view.degraded else "",
    )

def _feed_forward_disruption(budget: float, floor: float, draining: Sequence[PodFacts],
                             survivors: Sequence[PodFacts], state: LawState, *, absorb: bool
                             ) -> tuple[float, str, frozenset[str]]:
    """Survivors absorb the newly draining pods' load: budget × survivors / (survivors + new),
    when `absorb` (the load is not reported: with it, `feed_forward` counts the draining pods'
    load against the survivors' capacity instead)."""
    new = [p for p in draining if p.name not in state.draining]
    if not new:
        return budget, "", frozenset()
    names = frozenset(p.name for p in new)
    by_reason: dict[str, list[PodFacts]] = {}
    for p in new:
        by_reason.setdefault(p.disruption[0], []).append(p)
    notices = "; ".join(_notice(reason, group) for reason, group in sorted(by_reason.items()))
    if not survivors:
        return budget, f"{notices}; no surviving pods to absorb the load", names
    if not absorb:
        return budget, f"{notices}: survivors take their load", names
    lost = len(new) / (len(new) + len(survivors))
    target = max(floor, budget * (1.0 - lost))
    reason = (f"{notices}: survivors' budget {budget:.2f} → {target:.2f} "
              f"to absorb {lost:.0%} lost capacity")
    return target, reason, names


def _notice(reason: str, pods: Sequence[PodFacts]) -> str:
    """'node n3 has aws-node-termination-handler/spot-itn: draining 2 pods'."""
    nodes = sorted({p.node or "?" for p in pods})
    where = f"node {nodes[0]} has" if len(nodes) == 1 else f"nodes {', '.join(nodes)} have"
    return f"{where} {reason}: draining {len(pods)} pod{'s' if len(pods) != 1 else ''}"

def _commands(pods: Sequence[PodFacts], reports: Mapping[str, PodReport], budget: float,
              shared_floor: float, params: LawParams, reason: str
              ) -> tuple[dict[str, PodCommand], list[str]]:
    """Per-pod command: drain for disrupted pods, pressure-lowered ceilings for the rest; a pod's
    floor is the shared floor raised to its own calibration minimum."""
    commands, events = {}, []
    for pod in pods:
        report = reports.get(pod.name)
        floor = max(shared_floor, _unit(report.min_budget, 0.0) if report else 0.0)
        budget_here = max(budget, floor)
        if pod.disruption:
            commands[pod.name] = PodCommand(
                pod.name, floor, floor, max(floor, min(budget_here, params.max_budget)), Mode.DRAIN,
                f"node {pod.node or '?'} has {pod.disruption[0]}: draining")
            continue
        ceiling = max(params.max_budget, floor)
        pod_reason = reason
        if pod.pressure:
            lowered = max(floor, params.max_budget * params.pressure_ceiling_factor)
            where = f"node {pod.node or '?'} has {', '.join(pod.pressure)}"
            pod_reason = (f"{where}: ceiling {ceiling:.2f} → {lowered:.2f}" if lowered < ceiling
                          else f"{where}: ceiling held at the quality floor {floor:.2f}")
            events.append(pod_reason + f" for pod {pod.name}")
            ceiling = lowered
        commands[pod.name] = PodCommand(pod.name, min(budget_here, ceiling), floor, ceiling,
                                        Mode.NORMAL, pod_reason)
    return commands, events


def _unit(value: float | None, fallback: float | None) -> float | None:
    """`value` clamped into [0, 1]; `fallback` when it is missing or not finite."""
    if value is None or not math.isfinite(value):
        return fallback
    return min(1.0, max(0.0, float(value)))


def _max_budget(params: LawParams) -> float:
    """maxBudget when it is a budget in (0, 1], else dense."""
    value = params.max_budget
    return float(value) if math.isfinite(value) and 0.0 < value <= 1.0 else 1.0


def _lower_median(values: Sequence[float]) -> float:
    """The lower median (0 for none): robust to one outlier among three or more workers."""
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2] if ordered else 0.0
