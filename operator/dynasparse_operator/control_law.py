"""The control law: reports + pod facts + parameters + previous state -> per-pod commands.

Pure (no kopf, kubernetes, grpc, clock): the operator's daemon calls `decide` every control
interval and at once when `violates_slo` says a fresh report broke the SLO; the local demo and the
simulation tests (tests/operator/) call it the same way. Types live in law_types.py.

The loop, in small steps:
1. `quality_floor`: spec.quality (minBudget, or maxLoss mapped through the workers' quality curve),
   never below the workers' calibration minimum; the ceiling (maxBudget) never below the floor.
   A worker's reported minimum raises only that worker's floor: the shared floor takes the lower
   median of the reported minimums, so one worker claiming 1.0 cannot force every pod dense.
2. Feed-forward: pods on a disrupted/cordoned node drain; survivors' budget drops in proportion to
   the capacity lost, at once, before their latency rises. Node pressure lowers that pod's ceiling.
3. Feedback: integral control in log space on the worst fresh pod's p95/SLO, steered to
   `setpoint_ratio` with a hold band (wider below than above); cuts fast, relaxes slowly (asymmetric
   steps, and hold-offs that wait for the reports to show the last change);
   clamped to [floor, ceiling] without wind-up (velocity form: only the budget is integrated).
   Against hunting: a violating p95 no worse than the one the last cut acted on is the same
   30 s window again and cuts nothing more; too few samples mean idleness only when nothing runs
   or waits and the few samples there are sit well under the SLO.
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
from dynasparse_operator.law_types import (MODE_DRAIN, MODE_NORMAL, Decision, LawParams, LawState,
                                           PodCommand, PodFacts, PodReport)
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


def slo_ratio(report: PodReport, params: LawParams, min_samples: int | None = None) -> float | None:
    """Worst of p95/SLO over the axes with a target and enough samples; None when no axis has."""
    need = params.min_samples if min_samples is None else min_samples
    itl_samples = report.samples if report.inter_token_samples < 0 else report.inter_token_samples
    ratios = []
    if params.ttft_slo_ms > 0 and report.samples >= need:
        ratios.append(report.ttft_p95_ms / params.ttft_slo_ms)
    if params.inter_token_slo_ms > 0 and itl_samples >= need:
        ratios.append(report.inter_token_p95_ms / params.inter_token_slo_ms)
    ratios = [r for r in ratios if math.isfinite(r) and r >= 0.0]  # a broken sample is no sample
    return max(ratios) if ratios else None


def violates_slo(report: PodReport, params: LawParams) -> bool:
    """True when this report alone warrants running the law now instead of at the next tick."""
    ratio = slo_ratio(report, params)
    if ratio is not None and ratio > 1.0:
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
        _, ratio, _, _ = _worst(survivors, reports, params, now)
        fb = _Feedback(budget, kind, f"{why}{view.reason}; budget {state.budget:.2f} → {budget:.2f}",
                       min(state.last_error, -1e-6) if move == "tighten" else 0.0, ratio)
        if ff_reason:
            fb = dataclasses.replace(fb, reason=f"{ff_reason}; {fb.reason}")
    elif view.reported:
        calm = not (view.panic or view.late_in_flight)
        t = miss_trim.trim(budget, level, floor, survivors, reports, params,
                           now - state.last_change_at, calm, now)
        _, ratio, _, _ = _worst(survivors, reports, params, now)
        seen = _observation(survivors, reports, params, now)
        fb = _Feedback(t.budget, "slo-violation" if t.kind == "tighten" else t.kind,
                       f"{seen}; {t.reason}" if seen else t.reason, 0.0, ratio, observation=seen)
    else:
        fb = _feedback(budget, floor, survivors, reports, params, state, now)
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
        cut_ratio=_cut_ratio(state, fb, changed, budget),
        load_budget=level if view.reported or math.isfinite(state.load_budget) else math.nan,
        load_since=now if move else state.load_since,
        recommendations=recommendations,
    )
    return Decision(
        at=now, state=new_state, commands=commands, from_budget=state.budget, to_budget=budget,
        reason=fb.reason,
        kind=fb.kind, floor=floor, ceiling=params.max_budget, worst_ratio=fb.worst_ratio,
        ttft_p95_ms=fb.ttft_ms, inter_token_p95_ms=fb.itl_ms, observation=fb.observation,
        surge_replicas=len(draining) if params.replace_disrupted_pods else 0,
        events=tuple(events), problems=(problem,) if problem else (),
    )


def _cut_ratio(state: LawState, fb: "_Feedback", changed: bool, budget: float) -> float:
    """The worst p95/SLO a feedback cut acted on, kept until the next change (0 after a relax or
    a change for another reason)."""
    if not changed:
        return state.cut_ratio
    cut = budget < state.budget and fb.kind in ("slo-violation", "tighten", "load", "panic")
    return (fb.worst_ratio or 0.0) if cut else 0.0


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


@dataclasses.dataclass(frozen=True)
class _Feedback:
    budget: float
    kind: str
    reason: str
    error: float
    worst_ratio: float | None = None
    ttft_ms: float | None = None
    itl_ms: float | None = None
    observation: str = ""


def _worst(survivors: Sequence[PodFacts], reports: Mapping[str, PodReport], params: LawParams,
           now: float) -> tuple[PodReport | None, float | None, list[str], int]:
    """Worst fresh report among survivors, its ratio, stale pod names, fresh report count."""
    worst, worst_ratio, stale, fresh = None, None, [], 0
    for pod in survivors:
        report = reports.get(pod.name)
        if report is None or now - report.received_at > params.stale_after_s:
            stale.append(pod.name)
            continue
        fresh += 1
        ratio = slo_ratio(report, params)
        if ratio is not None and (worst_ratio is None or ratio > worst_ratio):
            worst, worst_ratio = report, ratio
    return worst, worst_ratio, stale, fresh


def _describe(report: PodReport, params: LawParams) -> str:
    """'p95 TTFT 812 ms' on whichever axis is worst against its SLO."""
    axes = []
    if params.ttft_slo_ms > 0:
        axes.append((report.ttft_p95_ms / params.ttft_slo_ms, "TTFT", report.ttft_p95_ms,
                     params.ttft_slo_ms))
    if params.inter_token_slo_ms > 0:
        axes.append((report.inter_token_p95_ms / params.inter_token_slo_ms, "inter-token",
                     report.inter_token_p95_ms, params.inter_token_slo_ms))
    _, name, value, slo = max(axes)
    sign = ">" if value > slo else "≤"
    return f"p95 {name} {value:.0f} ms {sign} SLO {slo:.0f} ms"


def _feedback(budget: float, floor: float, survivors: Sequence[PodFacts],
              reports: Mapping[str, PodReport], params: LawParams, state: LawState,
              now: float) -> _Feedback:
    fb = _feedback_core(budget, floor, survivors, reports, params, state, now)
    stale = _stale(survivors, reports, params, now)
    if stale and fb.kind != "no-data" and "no report from" not in fb.reason:
        fb = dataclasses.replace(fb, reason=f"{fb.reason}; no report from {', '.join(stale)}")
    if fb.worst_ratio is not None and fb.worst_ratio > 0:
        worst, _, _, _ = _worst(survivors, reports, params, now)
        fb = dataclasses.replace(fb, observation=_describe(worst, params))
    return fb


def _observation(survivors: Sequence[PodFacts], reports: Mapping[str, PodReport],
                 params: LawParams, now: float) -> str:
    worst, ratio, _, _ = _worst(survivors, reports, params, now)
    return _describe(worst, params) if worst is not None and ratio else ""


def _stale(survivors: Sequence[PodFacts], reports: Mapping[str, PodReport], params: LawParams,
           now: float) -> list[str]:
    return sorted(p.name for p in survivors if p.name not in reports
                  or now - reports[p.name].received_at > params.stale_after_s)


def _feedback_core(budget: float, floor: float, survivors: Sequence[PodFacts],
                   reports: Mapping[str, PodReport], params: LawParams, state: LawState,
                   now: float) -> _Feedback:
    worst, ratio, stale, fresh = _worst(survivors, reports, params, now)
    since_change = now - state.last_change_at
    if fresh == 0:
        why = "no fresh reports" if survivors else "no serving pods"
        return _Feedback(budget, "no-data", f"{why}: holding budget {budget:.2f}", 0.0)
    ttft = worst.ttft_p95_ms if worst else None
    itl = worst.inter_token_p95_ms if worst else None
    if ratio is None or ratio <= 0:
        fresh_reports = [r for p in survivors if (r := reports.get(p.name)) is not None
                         and now - r.received_at <= params.stale_after_s]
        queued = sum(r.queue_depth for r in fresh_reports)
        running = sum(r.running for r in fresh_reports)
        if queued or running:
            # Too few finished requests to judge, yet requests wait or run: the pods may be so
            # slow that few complete inside the window, and sparse traffic is not idleness.
            # Relaxing now would make the next requests slower.
            return _Feedback(budget, "hold", f"too few samples to judge, {queued} queued, "
                             f"{running} running: holding budget {budget:.2f}", 0.0)
        near = [x for r in fresh_reports
                if (x := slo_ratio(r, params, min_samples=1)) is not None and x > params.band[0]]
        if near:
            # The few samples there are sit near the SLO: relaxing would push the next over it.
            return _Feedback(budget, "hold", f"too few samples to judge, the few near the SLO: "
                             f"holding budget {budget:.2f}", 0.0)
        # Idle, nothing waiting or running: nothing to protect, relax towards the ceiling.
        error, what = params.max_step_up / params.gain * 2, "idle (too few samples, none queued)"
    else:
        error, what = math.log(params.setpoint_ratio / ratio), _describe(worst, params)
    low, high = params.band
    if ratio is not None and low <= ratio <= high:
        return _Feedback(budget, "hold", f"{what}: within band, budget {budget:.2f}", 0.0,
                         ratio, ttft, itl)
    # Integral action in log space, gentler upwards; while the SLO is violated a one-sided
    # proportional kick speeds the cut (it never reverses a correction).
    tighten = error < 0
    step = params.gain * error if tighten else params.relax_gain * error
    if ratio is not None and ratio > 1.0:
        step = min(step, step + 0.5 * params.gain * (error - state.last_error))
    if tighten:
        step = max(step, -params.max_step_down)
        if since_change < params.tighten_holdoff_s and ratio is not None and ratio <= 1.0:
            return _Feedback(budget, "hold", f"{what}: waiting for the last cut to show",
                             state.last_error, ratio, ttft, itl)
        if since_change < params.tighten_holdoff_s and state.last_error < 0:
            return _Feedback(budget, "hold", f"{what}: last cut not yet visible",
                             state.last_error, ratio, ttft, itl)
        if (state.cut_ratio > 0 and ratio is not None and since_change < params.episode_s
                and ratio <= state.cut_ratio * 1.05):
            # The window still holds the late samples the last cut acted on: a p95 no worse than
            # that one is the same evidence again, not a sign the cut was too small.
            return _Feedback(budget, "hold", f"{what}: no worse than at the last cut, waiting "
                             "for it to show", state.last_error, ratio, ttft, itl)
    else:
        step = min(step, params.max_step_up)
        if stale:
            return _Feedback(budget, "hold", f"{what}; no report from {', '.join(sorted(stale))}: "
                             f"not relaxing, budget {budget:.2f}", 0.0, ratio, ttft, itl)
        if since_change < params.relax_holdoff_s:
            return _Feedback(budget, "hold", f"{what}: budget {budget:.2f}, relaxing later",
                             0.0, ratio, ttft, itl)
    target = min(max(budget * math.exp(step), floor), params.max_budget)
    if abs(target - budget) < 0.005:
        bound = "floor" if tighten else "ceiling"
        return _Feedback(budget, "hold", f"{what}: budget {budget:.2f} at its {bound}",
                         error, ratio, ttft, itl)
    if tighten and ratio is not None and ratio <= 1.0:
        # Cutting under the SLO is deliberate: the p95 sits above the band around the setpoint.
        what = f"{what}, above the {100 * params.band[1]:.0f} % band"
    kind = "slo-violation" if ratio is not None and ratio > 1.0 else ("tighten" if tighten else "relax")
    return _Feedback(target, kind, f"{what}: budget {budget:.2f} → {target:.2f}", error,
                     ratio, ttft, itl)


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
                pod.name, floor, floor, max(floor, min(budget_here, params.max_budget)), MODE_DRAIN,
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
                                        MODE_NORMAL, pod_reason)
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
