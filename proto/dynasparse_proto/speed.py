"""The speed curve a Report carries (decode throughput relative to dense, by budget), read one way
by the worker (to turn busy slot-time into dense work) and the operator (to find the largest
budget whose capacity covers the load), so both ends agree on what a budget buys.
"""

from __future__ import annotations

import bisect
import math
from typing import Iterable, Sequence

Curve = tuple[tuple[float, float], ...]  # (budget, speed-up over dense), ascending budget

FLAT: Curve = ((1.0, 1.0),)
"""No measured curve: assume a cut buys no speed (feed-forward then never counts on a gain)."""


def valid_speed_curve(points: Iterable[tuple[float, float]]) -> Curve:
    """The (budget, speed-up) points with a budget in (0, 1] and a finite speed-up > 0, sorted by
    budget; anything else in a reported curve is dropped."""
    kept = {(float(b), float(s)) for b, s in points
            if math.isfinite(b) and 0.0 < b <= 1.0 and math.isfinite(s) and s > 0.0}
    return tuple(sorted(kept))


def speedup_at(curve: Sequence[tuple[float, float]], budget: float) -> float:
    """Speed-up at `budget`: linear between measured points, flat beyond the ends (1 for none)."""
    if not curve:
        return 1.0
    budgets = [b for b, _ in curve]
    if budget <= budgets[0]:
        return curve[0][1]
    if budget >= budgets[-1]:
        return curve[-1][1]
    i = bisect.bisect_right(budgets, budget)
    (b0, s0), (b1, s1) = curve[i - 1], curve[i]
    return s0 + (s1 - s0) * (budget - b0) / (b1 - b0)


def largest_budget_for_speedup(curve: Sequence[tuple[float, float]], needed: float,
                               floor: float, ceiling: float) -> float | None:
    """The largest budget in [floor, ceiling] whose speed-up is at least `needed`; None when even
    the floor falls short. Searched on a fine grid, so a curve that is not monotone is safe."""
    steps = max(1, int(round((ceiling - floor) / 0.005)))
    for k in range(steps, -1, -1):
        budget = floor + (ceiling - floor) * k / steps
        if speedup_at(curve, budget) >= needed - 1e-12:
            return budget
    return None
