"""The p95 feedback: how far the worst fresh pod's p95 sits from the SLO, and the integral law that
steers the budget on it when the workers report no load signals (older workers); with them it
only describes what the reports show (the feed-forward and the miss trim steer).

Pure; called by control_law.decide. Against hunting: a violating p95 no worse than the one the
last cut acted on is the same 30 s window again and cuts nothing more; too few samples mean
idleness only when nothing runs or waits and the few samples there are sit well under the SLO.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

from dynasparse_operator.law_types import LawParams, LawState, PodFacts, PodReport


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


@dataclasses.dataclass(frozen=True)
class Feedback:
    budget: float
    kind: str
    reason: str
    error: float
    worst_ratio: float | None = None
    ttft_ms: float | None = None
    itl_ms: float | None = None
    observation: str = ""


def worst_report(survivors: Sequence[PodFacts], reports: Mapping[str, PodReport],
                 params: LawParams, now: float
                 ) -> tuple[PodReport | None, float | None, list[str], int]:
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


def describe(report: PodReport, params: LawParams) -> str:
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


def feedback(budget: float, floor: float, survivors: Sequence[PodFacts],
              reports: Mapping[str, PodReport], params: LawParams, state: LawState,
              now: float) -> Feedback:
    fb = _feedback_core(budget, floor, survivors, reports, params, state, now)
    stale = _stale(survivors, reports, params, now)
    if stale and fb.kind != "no-data" and "no report from" not in fb.reason:
        fb = dataclasses.replace(fb, reason=f"{fb.reason}; no report from {', '.join(stale)}")
    if fb.worst_ratio is not None and fb.worst_ratio > 0:
        worst, _, _, _ = worst_report(survivors, reports, params, now)
        fb = dataclasses.replace(fb, observation=describe(worst, params))
    return fb


def observation(survivors: Sequence[PodFacts], reports: Mapping[str, PodReport],
                 params: LawParams, now: float) -> str:
    worst, ratio, _, _ = worst_report(survivors, reports, params, now)
    return describe(worst, params) if worst is not None and ratio else ""


def _stale(survivors: Sequence[PodFacts], reports: Mapping[str, PodReport], params: LawParams,
           now: float) -> list[str]:
    return sorted(p.name for p in survivors if p.name not in reports
                  or now - reports[p.name].received_at > params.stale_after_s)


def _feedback_core(budget: float, floor: float, survivors: Sequence[PodFacts],
                   reports: Mapping[str, PodReport], params: LawParams, state: LawState,
                   now: float) -> Feedback:
    worst, ratio, stale, fresh = worst_report(survivors, reports, params, now)
    since_change = now - state.last_change_at
    if fresh == 0:
        why = "no fresh reports" if survivors else "no serving pods"
        return Feedback(budget, "no-data", f"{why}: holding budget {budget:.2f}", 0.0)
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
            return Feedback(budget, "hold", f"too few samples to judge, {queued} queued, "
                             f"{running} running: holding budget {budget:.2f}", 0.0)
        near = [x for r in fresh_reports
                if (x := slo_ratio(r, params, min_samples=1)) is not None and x > params.band[0]]
        if near:
            # The few samples there are sit near the SLO: relaxing would push the next over it.
            return Feedback(budget, "hold", f"too few samples to judge, the few near the SLO: "
                             f"holding budget {budget:.2f}", 0.0)
        # Idle, nothing waiting or running: nothing to protect, relax towards the ceiling.
        error, what = params.max_step_up / params.gain * 2, "idle (too few samples, none queued)"
    else:
        error, what = math.log(params.setpoint_ratio / ratio), describe(worst, params)
    low, high = params.band
    if ratio is not None and low <= ratio <= high:
        return Feedback(budget, "hold", f"{what}: within band, budget {budget:.2f}", 0.0,
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
            return Feedback(budget, "hold", f"{what}: waiting for the last cut to show",
                             state.last_error, ratio, ttft, itl)
        if since_change < params.tighten_holdoff_s and state.last_error < 0:
            return Feedback(budget, "hold", f"{what}: last cut not yet visible",
                             state.last_error, ratio, ttft, itl)
        if (state.cut_ratio > 0 and ratio is not None and since_change < params.episode_s
                and ratio <= state.cut_ratio * 1.05):
            # The window still holds the late samples the last cut acted on: a p95 no worse than
            # that one is the same evidence again, not a sign the cut was too small.
            return Feedback(budget, "hold", f"{what}: no worse than at the last cut, waiting "
                             "for it to show", state.last_error, ratio, ttft, itl)
    else:
        step = min(step, params.max_step_up)
        if stale:
            return Feedback(budget, "hold", f"{what}; no report from {', '.join(sorted(stale))}: "
                             f"not relaxing, budget {budget:.2f}", 0.0, ratio, ttft, itl)
        if since_change < params.relax_holdoff_s:
            return Feedback(budget, "hold", f"{what}: budget {budget:.2f}, relaxing later",
                             0.0, ratio, ttft, itl)
    target = min(max(budget * math.exp(step), floor), params.max_budget)
    if abs(target - budget) < 0.005:
        bound = "floor" if tighten else "ceiling"
        return Feedback(budget, "hold", f"{what}: budget {budget:.2f} at its {bound}",
                         error, ratio, ttft, itl)
    if tighten and ratio is not None and ratio <= 1.0:
        # Cutting under the SLO is deliberate: the p95 sits above the band around the setpoint.
        what = f"{what}, above the {100 * params.band[1]:.0f} % band"
    kind = "slo-violation" if ratio is not None and ratio > 1.0 else ("tighten" if tighten else "relax")
    return Feedback(target, kind, f"{what}: budget {budget:.2f} → {target:.2f}", error,
                     ratio, ttft, itl)


def cut_ratio(state: LawState, fb: Feedback, changed: bool, budget: float) -> float:
    """The worst p95/SLO a feedback cut acted on, kept until the next change (0 after a relax or
    a change for another reason)."""
    if not changed:
        return state.cut_ratio
    cut = budget < state.budget and fb.kind in ("slo-violation", "tighten", "load", "panic")
    return (fb.worst_ratio or 0.0) if cut else 0.0
