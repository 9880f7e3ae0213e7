"""Budget actuators: how the supervisor's budget reaches the model.

* `GatedActuator` drives the engine of a gated model: `set_budget(b)` calls `Engine.apply_budget`,
  which writes the plan into the `SparsityState` device tensors and hands its host view to the
  model runner; min budget (the calibrated floor), expected loss and the quality curve come from the
  plan table. The supervisor calls it on the engine thread only, between two steps.
* `PendingActuator` stands in while a calibrated model loads: its floor is not known yet, so it
  lets any budget through; attaching the `GatedActuator` then raises the floor to the calibrated
  one and keeps a `--budget` at or above it.
* `RemoteActuator` drives the `GatedActuator` of an engine running in a child process
  (server/engine_process.py): `set_budget` sends the budget as a command, the child applies it
  before its next step, and `confirm` records what it applied; floor and curves are the ones the
  child measured once after loading. It is `deferred`: the supervisor reports a budget as applied
  only once the child confirmed it.
* `UncalibratedActuator` is used when no calibration is given: the model runs dense, so the budget
  is recorded (reports, metrics and the fast loop still work) but not applied; its `applies` flag
  is False and the server logs that at start-up.

Built by server/runtime.py; read by control/supervisor.py through the `BudgetActuator` protocol.
"""

from __future__ import annotations

from typing import Any, Callable

_SMALLEST_BUDGET = 1e-6  # a floor below any calibrated one: the placeholder's "not known yet"


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


class PendingActuator(UncalibratedActuator):
    """Before a calibrated model has loaded: records the budget, floor not known yet."""

    def __init__(self) -> None:
        super().__init__(_SMALLEST_BUDGET)


class GatedActuator:
    applies = True

    def __init__(self, engine: Any, curve_points: int = 15):
        self.engine = engine
        self.gated = engine.gated
        self.curve_points = curve_points
        self.applied = None  # the last `engine.AppliedBudget`

    @property
    def budget(self) -> float:
        return self.applied.budget if self.applied is not None else float(self.gated.state.budget)

    def set_budget(self, budget: float) -> float:
        self.applied = self.engine.apply_budget(max(budget, self.min_budget()))
        return self.applied.expected_loss

    def min_budget(self) -> float:
        return float(self.gated.floor)

    def speed_curve(self) -> list[tuple[float, float]]:
        """(budget, decode speed-up over dense) the engine measured at start-up for its largest
        batch bucket (a loaded server runs full batches), offered levels only; none when it
        measured nothing (the CPU without a timer)."""
        speed = getattr(self.engine, "speed", None)
        if speed is None or not speed.levels:
            return []
        bucket = max(speed.levels)
        dense = speed.dense_ms[bucket]
        points = [(float(lv.budget), dense / lv.ms) for lv in speed.levels[bucket]
                  if lv.offered and lv.ms > 0]
        return sorted(set(points) | {(1.0, 1.0)})

    def quality_curve(self) -> list[tuple[float, float]]:
        table = getattr(self.gated, "table", None)
        if table is None:
            return [(1.0, 0.0)]
        budgets = [float(b) for b in table.budgets]
        stride = max(1, len(budgets) // self.curve_points)
        picked = sorted(set(budgets[::stride]) | {budgets[0], budgets[-1]})
        return [(b, self.gated.expected_loss(b)) for b in picked]


class RemoteActuator:
    applies = True
    deferred = True  # applied by another process: confirmed later through `confirm`

    def __init__(self, info: Any, send: Callable[[float], None]):
        """`info`: the child's `EngineInfo` (floor and curves); `send(b)` posts a budget command."""
        self._send = send
        self._floor = float(info.floor)
        self._quality = list(info.quality_curve)
        self._speed = list(info.speed_curve)
        self._sent: float | None = None
        self.budget = 1.0  # what the child last applied
        self.expected_loss = 0.0

    def set_budget(self, budget: float) -> float:
        """Post `budget`; returns the last applied expected loss until the child confirms."""
        self._sent = max(budget, self._floor)
        self._send(self._sent)
        return self.expected_loss

    def confirm(self, budget: float, expected_loss: float) -> bool:
        """The child applied `budget`; True if it is the latest one sent."""
        self.budget, self.expected_loss = float(budget), float(expected_loss)
        return self._sent is not None and abs(self.budget - self._sent) < 1e-6

    def min_budget(self) -> float:
        return self._floor

    def speed_curve(self) -> list[tuple[float, float]]:
        return list(self._speed)

    def quality_curve(self) -> list[tuple[float, float]]:
        return list(self._quality)
