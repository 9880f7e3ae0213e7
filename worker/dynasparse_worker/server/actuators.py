"""Budget actuators: how the supervisor's budget reaches the model.

* `SparsityActuator` drives the gated model's `SparsityState` (gating package): `set_budget(b)`
  copies the plan into its device tensors; expected loss and the quality curve come from it.
* `UncalibratedActuator` is used when no calibration is given: the model runs dense, so the budget
  is recorded (reports, metrics and the fast loop still work) but not applied; its `applies` flag
  is False and the server logs that at start-up.

Built by server/runtime.py; read by control/supervisor.py through the `BudgetActuator` protocol.
"""

from __future__ import annotations

import threading
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


class SparsityActuator:
    """Wraps a `SparsityState`-like object: `set_budget(b)`, `expected_loss` (tensor or float), and
    optionally `min_budget` and `quality_curve()` (or a `curve` of (budget, loss) pairs)."""

    applies = True

    def __init__(self, state: Any):
        self.state = state
        self._lock = threading.Lock()  # set_budget is called from the engine and gRPC threads

    def set_budget(self, budget: float) -> float:
        with self._lock:
            result = self.state.set_budget(budget)
            loss = getattr(self.state, "expected_loss", result)
            return _as_float(loss if loss is not None else 0.0)

    def min_budget(self) -> float:
        value = getattr(self.state, "min_budget", None)
        value = value() if callable(value) else value
        return _as_float(value) if value is not None else 0.0

    def quality_curve(self) -> list[tuple[float, float]]:
        curve = getattr(self.state, "quality_curve", None) or getattr(self.state, "curve", None)
        curve = curve() if callable(curve) else curve
        return [(_as_float(b), _as_float(loss)) for b, loss in (curve or [])]


def _as_float(value: Any) -> float:
    return float(value.item()) if hasattr(value, "item") else float(value)
