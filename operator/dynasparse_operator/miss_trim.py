"""The slow trim under the feed-forward: the measured fraction of requests missing the TTFT SLO.

Pure. What the load model cannot see (a slow prefill, a device slower than its speed curve) shows
as misses at a load the model calls safe. The workers count first tokens since their budget last
changed and how many missed the SLO (waiting requests already past it count as misses), so every
count was measured under the budget now applied and a cut is never judged on samples taken
before it. The trim cuts only when the miss fraction is above the SLO's 5 % with confidence (a
Wilson interval: a handful of samples moves nothing unless nearly all of them are late), gives
back only when it is confidently under, never above the feed-forward's level, and stops
integrating at the floor (no wind-up).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

from dynasparse_operator.law_types import LawParams, PodFacts, PodReport
from dynasparse_operator.p95_feedback import slo_ratio

ALLOWED_MISS = 0.05
"""A p95 target allows one request in twenty over it."""


@dataclasses.dataclass(frozen=True)
class Trim:
    budget: float
    kind: str  # "tighten" | "relax" | "hold"
    reason: str


def wilson(late: int, samples: int, z: float) -> tuple[float, float]:
    """Wilson score interval of the miss fraction; (0, 1) without samples."""
    if samples <= 0:
        return 0.0, 1.0
    p = late / samples
    denom = 1.0 + z * z / samples
    centre = (p + z * z / (2 * samples)) / denom
    half = z * math.sqrt(p * (1 - p) / samples + z * z / (4 * samples * samples)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def trim(budget: float, level: float, floor: float, survivors: Sequence[PodFacts],
         reports: Mapping[str, PodReport], params: LawParams, since_change: float,
         may_relax: bool, now: float) -> Trim:
    """The budget under the feed-forward's `level` that the measured misses call for."""
    samples = late = 0
    for pod in survivors:
        report = reports.get(pod.name)
        if report is None or report.load is None or now - report.received_at > params.stale_after_s:
            continue
        samples += report.load.samples_since_change
        late += report.load.late_since_change
    itl = _inter_token_ratio(survivors, reports, params, now)
    if itl > 1.0:
        # Inter-token latency is a decode-speed axis the load model does not plan for; its window
        # is not tagged by budget, so one cut per episode (the window must show the last one)
        if budget <= floor + 1e-9 or since_change < params.episode_s:
            return Trim(budget, "hold", f"p95 inter-token {itl:.2f}× its SLO: waiting for the "
                        f"last change to show, budget {budget:.2f}")
        target = max(floor, budget * max(params.trim_max_cut, 1.0 / itl))
        return Trim(target, "tighten", f"p95 inter-token {itl:.2f}× its SLO: "
                    f"budget {budget:.2f} → {target:.2f}")
    if samples == 0 or params.ttft_slo_ms <= 0:
        return Trim(budget, "hold", f"no first token since the last change: budget {budget:.2f}")
    low, _ = wilson(late, samples, params.miss_confidence_z)
    seen = f"{late} of {samples} first tokens over the SLO since the last change"
    if low > ALLOWED_MISS:
        if budget <= floor + 1e-9:
            return Trim(budget, "hold", f"{seen}: budget {budget:.2f} at its floor, "
                        "cannot cut further")
        if since_change < params.tighten_holdoff_s:
            # a report sent before the worker applied the last change still counts under the
            # budget before it
            return Trim(budget, "hold", f"{seen}: waiting for the last change to apply")
        factor = max(params.trim_max_cut, 1.0 - (late / samples - ALLOWED_MISS))
        target = max(floor, budget * factor)
        return Trim(target, "tighten", f"{seen}: budget {budget:.2f} → {target:.2f}")
    _, relaxed_high = wilson(late, samples, params.relax_confidence_z)
    # Light traffic never gathers enough first tokens for confidence: none late and a p95 well
    # under the SLO say the same, so the budget can come back when the load falls
    quiet = late == 0 and _well_under(survivors, reports, params, now)
    if ((relaxed_high < ALLOWED_MISS or quiet) and itl < params.setpoint_ratio
            and budget < level - 0.005 and may_relax and since_change >= params.relax_holdoff_s):
        target = min(level, budget * params.trim_relax_factor)
        return Trim(target, "relax", f"{seen}: budget {budget:.2f} → {target:.2f}")
    return Trim(budget, "hold", f"{seen}: budget {budget:.2f}")


def _inter_token_ratio(survivors: Sequence[PodFacts], reports: Mapping[str, PodReport],
                       params: LawParams, now: float) -> float:
    """Worst fresh p95 inter-token latency over its SLO (0: no target or too few samples)."""
    if params.inter_token_slo_ms <= 0:
        return 0.0
    worst = 0.0
    for pod in survivors:
        r = reports.get(pod.name)
        if r is None or now - r.received_at > params.stale_after_s:
            continue
        samples = r.samples if r.inter_token_samples < 0 else r.inter_token_samples
        if samples >= params.min_samples and math.isfinite(r.inter_token_p95_ms):
            worst = max(worst, r.inter_token_p95_ms / params.inter_token_slo_ms)
    return worst


def _well_under(survivors: Sequence[PodFacts], reports: Mapping[str, PodReport],
                params: LawParams, now: float) -> bool:
    """Every fresh pod with enough samples has its p95 TTFT under the hold band, and one has."""
    ratios = [slo_ratio(r, params) for p in survivors if (r := reports.get(p.name)) is not None
              and now - r.received_at <= params.stale_after_s]
    known = [x for x in ratios if x is not None]
    return bool(known) and max(known) < params.band[0]
