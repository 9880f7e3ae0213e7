"""Budget actuators: how the supervisor's budget reaches the model.

* `GatedActuator` drives the gated model (`gating.GatedModel`): `set_budget(b)` copies the plan into
  its `SparsityState` device tensors; min budget (its calibrated floor), expected loss and the
  quality curve come from its plan table. The supervisor calls it on the engine thread only.
* `UncalibratedActuator` is used when no calibration is given: the model runs dense, so the budget
  is recorded (reports, metrics and the fast loop still work) but not applied; its `applies` flag
  is False and the server logs that at start-up.

Built by server/runtime.py; read by control/supervisor.py through the `BudgetActuator` protocol.
"""

from __future__ import annotations

from typing import Any


class UncalibratedActuator:
    applies = False

    def __init__(self, min_budget: float = 1.0):
        self._min = min_budget
        self.budget = 1.0

    def set_budget(self, budget: float) -> float:
        self.budget = budget
        return 0.0

    def min_budget(self) -> float:
        return self._min

    def quality_curve(self) -> list[tuple[float, float]]:
        return [(1.0, 0.0)]


class GatedActuator:
    applies = True

    def __init__(self, gated: Any, curve_points: int = 15):
        self.gated = gated
        self.curve_points = curve_points

    @property
    def budget(self) -> float:
        return _as_float(self.gated.state.budget)

    def set_budget(self, budget: float) -> float:
        self.gated.set_budget(max(budget, self.min_budget()))
        return _as_float(self.gated.state.expected_loss)

    def min_budget(self) -> float:
        return float(self.gated.floor)

    def quality_curve(self) -> list[tuple[float, float]]:
        table = getattr(self.gated, "table", None)
        if table is None:
            return [(1.0, 0.0)]
        budgets = [float(b) for b in table.budgets]
        stride = max(1, len(budgets) // self.curve_points)
        picked = sorted(set(budgets[::stride]) | {budgets[0], budgets[-1]})
        return [(b, self.gated.expected_loss(b)) for b in picked]


def _as_float(value: Any) -> float:
    return float(value.item()) if hasattr(value, "item") else float(value)
