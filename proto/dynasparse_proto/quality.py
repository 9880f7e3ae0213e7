"""The quality curve a Report carries, and how a quality bound given as an expected loss becomes a
budget: one rule for the operator (its shared floor) and the worker (its floor before the first
operator contact), so both ends always agree on the lowest budget a bound allows.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

Curve = tuple[tuple[float, float], ...]  # (budget, expected loss), ascending budget


def valid_curve(points: Iterable[tuple[float, float]]) -> Curve:
    """The (budget, expected loss) points with a budget in (0, 1] and a finite loss >= 0, sorted
    by budget; anything else in a reported curve is dropped."""
    kept = {(float(b), float(loss)) for b, loss in points
            if math.isfinite(b) and 0.0 < b <= 1.0 and math.isfinite(loss) and loss >= 0.0}
    return tuple(sorted(kept))


def budget_for_loss(curve: Sequence[tuple[float, float]], max_loss: float) -> float:
    """Smallest measured budget from which every measured point up to dense meets `max_loss`.

    Conservative on purpose: nothing between two calibration points is known, so the answer is a
    point whose loss was measured, and a bump in the curve above it cannot hide a violation.
    No point meeting the loss (or no curve) means dense.
    """
    answer = 1.0
    for budget, loss in reversed(sorted(curve)):
        if loss > max_loss:
            break
        answer = budget
    return answer
