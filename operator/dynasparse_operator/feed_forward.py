"""Feed-forward in utilisation space: from the workers' offered load to the budget that serves it.

Pure. The pods' reported arrival rates, backlog and dense work per request give the load each
surviving pod must serve; a queueing model of its decode slots (queueing.py) says how much speed-up
over dense starts all but a small tail of the requests within the TTFT SLO at a utilisation under
a cap; through the *measured* speed curve, the answer is the largest budget within the bounds
whose speed-up covers it. Pods that are draining still count as load (it moves
to the survivors) but not as capacity, so a pre-emption notice is absorbed before latency rises.

Panic: a short-window arrival count several Poisson sigmas above the long-window rate. It plans on
the short rate and a fast drain of the backlog, and the law relaxes nothing while it lasts. A
waiting request already past the TTFT SLO (a miss in flight) also forbids relaxing, and lets a
level inside the band fall to the recommendation at once instead of waiting for the band's edge.

`relax_level` holds the level between decisions: a lower recommendation is followed at once, a
higher one only when every recommendation of the last window was higher by more than a deadband
(then to the lowest of them), so noise in the rates never walks the budget up and down.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

from dynasparse_operator.law_types import LawParams, PodFacts, PodReport
from dynasparse_proto.contract import LoadSignals
from dynasparse_operator.queueing import speed_for_tail
from dynasparse_proto.load import LONG_WINDOW_S, SHORT_WINDOW_S
from dynasparse_proto.speed import largest_budget_for_speedup, speedup_at


@dataclasses.dataclass(frozen=True)
class LoadView:
    """What the load says, for one decision."""

    budget: float | None  # the recommendation; None: the load is not known
    tighten_below: float = 1.0  # the level above which utilisation is too high: cut to `budget`
    relax_to: float = 1.0  # the level the load allows relaxing to (a lower utilisation)
    reason: str = ""
    panic: str = ""  # why the law must not relax now ("" when calm)
    late_in_flight: bool = False  # a waiting request is already past the TTFT SLO
    degraded: bool = False  # even the floor's capacity falls short of the load
    reported: bool = True  # the pods report their load (False: the feedback law steers alone)


def _fresh_loads(pods: Sequence[PodFacts], reports: Mapping[str, PodReport], params: LawParams,
                 now: float) -> dict[str, LoadSignals]:
    loads = {}
    for pod in pods:
        report = reports.get(pod.name)
        if report is not None and report.load is not None \
                and now - report.received_at <= params.stale_after_s:
            loads[pod.name] = report.load
    return loads


def jumped(short: float, long: float, sigmas: float) -> bool:
    """The short window's count is more than `sigmas` Poisson sigmas over what the long rate
    predicts (and a fifth above it, so a large steady rate's tiny relative noise never counts)."""
    expected = long * SHORT_WINDOW_S
    return short * SHORT_WINDOW_S > expected + sigmas * math.sqrt(max(expected, 1.0)) and short > 1.2 * long


def recommend(pods: Sequence[PodFacts], reports: Mapping[str, PodReport], params: LawParams,
              floor: float, ceiling: float, now: float) -> LoadView:
    """The budget the offered load calls for, from the fresh reports of `pods` (draining included)."""
    loads = _fresh_loads(pods, reports, params, now)
    survivors = [p for p in pods if not p.disruption]
    serving = {name: load for name, load in loads.items()
               if any(p.name == name for p in survivors)}
    if not serving:
        return LoadView(None, reported=False)
    slo_s = params.ttft_slo_ms / 1000.0
    oldest = max(load.oldest_waiting_s for load in serving.values())
    late = slo_s > 0 and oldest > slo_s
    rate_long = sum(load.arrival_rate_long for load in loads.values())
    rate_short = sum(load.arrival_rate_short for load in loads.values())
    waiting = sum(reports[name].queue_depth for name in serving)
    panic = ""
    if jumped(rate_short, rate_long, params.jump_sigmas):
        panic = f"arrivals jumped to {rate_short:.1f} req/s from {rate_long:.1f}"
    known = [load for load in serving.values() if load.work_per_request_s > 0 and load.slots > 0]
    if not known:
        if rate_long == 0 and rate_short == 0 and waiting == 0:
            return LoadView(ceiling, ceiling, ceiling,
                            "no traffic: trusting the model, budget at the ceiling")
        return LoadView(None, panic=panic, late_in_flight=late, reported=True)
    slots = sum(load.slots for load in known) / len(known) * len(survivors)
    weights = [max(load.arrival_rate_long, 1e-9) for load in known]
    work = sum(w * load.work_per_request_s for w, load in zip(weights, known)) / sum(weights)
    curve = next((load.speed_curve for load in known if load.speed_curve), ())
    if not curve:  # no measured speed (a CPU worker): the model cannot say what a cut buys, so
        # the p95 feedback steers, as it does for workers that send no load signals
        return LoadView(None, panic=panic, late_in_flight=late, reported=False)
    # in a panic, plan on the short window's rate less one sigma of its count: still well above the
    # long rate (the jump was four sigmas), yet a lucky burst is not taken for the new load
    rate = max(rate_long, rate_short - math.sqrt(rate_short / SHORT_WINDOW_S)) if panic \
        else rate_long
    drain_s = params.panic_drain_s if panic else params.drain_s
    pod_slots = max(1, round(slots / len(survivors)))
    wait_s = params.wait_slack * slo_s if slo_s > 0 else math.inf
    # relaxing plans on the long rate plus two sigmas of its count, so that a quiet ten seconds
    # is not taken for less load (tightening plans on the rate as measured)
    margin = 2.0 * math.sqrt(rate_long / LONG_WINDOW_S)

    def level_at(tail: float, extra: float = 0.0) -> tuple[float | None, float]:
        per_pod = (rate + extra + waiting / drain_s) / len(survivors)
        needed = speed_for_tail(per_pod, work, pod_slots, wait_s, tail, params.max_utilisation)
        return largest_budget_for_speedup(curve, needed, floor, ceiling), needed

    budget, needed = level_at(params.tail_target)
    load_text = (f"{rate:.1f} req/s + {waiting} waiting × {work:.2f} s of dense decode over "
                 f"{slots:.0f} slots needs {needed:.2f}× dense speed to start "
                 f"{1 - params.tail_target:.0%} within {wait_s * 1000:.0f} ms")
    if budget is None:
        return LoadView(floor, floor, floor, f"{load_text}, more than the floor gives "
                        f"({speedup_at(curve, floor):.2f}×): holding the floor {floor:.2f}",
                        panic, late, degraded=True)
    high, _ = level_at(params.tail_tighten)
    low, _ = level_at(params.tail_relax, margin)
    return LoadView(budget, floor if high is None else high,
                    budget if low is None else min(low, budget),
                    f"{load_text} → budget {budget:.2f}", panic, late)


def relax_level(level: float, view: LoadView, history: tuple[tuple[float, float], ...],
                params: LawParams, now: float) -> tuple[float, tuple[tuple[float, float], ...], str]:
    """The feed-forward's next level, the relax candidates kept, and what happened ("tighten",
    "relax" or ""). Between the tightening and the relaxing utilisation the level holds: that band
    is wider than the noise of the measured load, so only a real change moves it."""
    if view.budget is None:
        return level, (), ""
    kept = tuple((t, b) for t, b in history if t > now - params.relax_window_s)
    kept += ((now, view.relax_to),)
    pressed = view.panic or view.late_in_flight  # a miss in flight: no band, go to the target
    if view.budget < level - 0.01 and (view.tighten_below < level - 1e-9 or pressed):
        return view.budget, kept, "tighten"
    covered = kept[0][0] <= now - params.relax_window_s + params.interval_s + 1e-9
    lowest = min(b for _, b in kept)
    if covered and not view.panic and not view.late_in_flight \
            and lowest > level + params.relax_deadband:
        return lowest, kept, "relax"
    return level, kept, ""
