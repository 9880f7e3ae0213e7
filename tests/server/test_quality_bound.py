"""The AdaptiveModel's quality bound holds in the worker at every moment: before the operator's first
update (it is given at pod creation), whatever updates say, under any pressure, and with the
operator gone for good. Property-based over bounds, curves and event sequences."""

from __future__ import annotations

import argparse
import math

import pytest
from hypothesis import given, settings, strategies as st

from dynasparse_proto.contract import Command, Mode
from dynasparse_proto.quality import budget_for_loss
from dynasparse_worker.commands import serve
from dynasparse_worker.control.memory import MemoryReading
from dynasparse_worker.control.supervisor import Supervisor
from dynasparse_worker.engine.types import EngineStats
from dynasparse_worker.errors import UserError

CURVE = [(0.3, 0.5), (0.5, 0.2), (0.7, 0.05), (1.0, 0.0)]


class Actuator:
    def __init__(self, min_budget=0.3, curve=CURVE) -> None:
        self.applied: list[float] = []
        self._min, self._curve = min_budget, curve

    def set_budget(self, budget: float) -> float:
        self.applied.append(budget)
        return 0.0

    def min_budget(self) -> float:
        return self._min

    def quality_curve(self):
        return list(self._curve)


class Memory:
    """A memory probe whose reading the test sets (pressure on demand)."""

    def __init__(self) -> None:
        self.used = 0

    def read(self) -> MemoryReading:
        return MemoryReading(self.used, 100, "test")


def supervisor(actuator, clock, memory=None, **bound) -> Supervisor:
    sup = Supervisor(actuator, pod_name="w", model_name="m", memory=memory or Memory(),
                     clock=lambda: clock[0], **bound)
    sup.model_loaded = True
    return sup


def test_the_floor_before_the_first_update_is_the_crs_min_budget():
    actuator = Actuator()
    sup = supervisor(actuator, [0.0], quality_min_budget=0.6, initial_budget=0.4)
    assert sup.control.floor == 0.6 and sup.budget == 0.6 and actuator.applied == [0.6]


def test_a_max_loss_bound_maps_to_a_measured_point_of_the_calibration_curve():
    sup = supervisor(Actuator(), [0.0], quality_max_loss=0.1, initial_budget=0.3)
    assert sup.control.floor == 0.7 and sup.budget == 0.7
    dense = supervisor(Actuator(curve=[]), [0.0], quality_max_loss=0.1, initial_budget=0.3)
    assert dense.budget == 1.0, "no curve to judge the loss by: dense"


def test_the_snapshot_still_reports_the_calibration_minimum():
    sup = supervisor(Actuator(), [0.0], quality_min_budget=0.6)
    assert sup.snapshot().min_budget == 0.3


finite_or_not = st.floats(allow_nan=True, allow_infinity=True)
events = st.lists(st.one_of(
    st.tuples(st.just("update"), finite_or_not, finite_or_not, finite_or_not, st.booleans()),
    st.tuples(st.just("pressure"), st.integers(0, 100), st.integers(0, 100), st.floats(0, 1)),
    st.tuples(st.just("wait"), st.floats(0, 40 * 86400)),
    st.tuples(st.just("stream"), st.booleans()),
), max_size=25)


@settings(max_examples=300, deadline=None)
@given(min_budget=st.one_of(st.none(), st.floats(0.01, 1.0)),
       max_loss=st.one_of(st.none(), st.floats(0.0, 1.0)),
       calibration_min=st.floats(0.05, 1.0), initial=st.floats(0.01, 1.0), script=events)
def test_the_applied_budget_never_goes_below_the_quality_bound(min_budget, max_loss,
                                                                calibration_min, initial, script):
    bound = max(calibration_min, min_budget or 0.0,
                budget_for_loss(CURVE, max_loss) if max_loss is not None else 0.0)
    clock, memory, actuator = [0.0], Memory(), Actuator(min_budget=calibration_min)
    sup = supervisor(actuator, clock, memory, quality_min_budget=min_budget,
                     quality_max_loss=max_loss, initial_budget=initial)
    sequence = 0
    for event in script:
        if event[0] == "update":
            sequence += 1
            _, target, floor, ceiling, drain = event
            sup.apply_update(Command(1, sequence, target_budget=target, floor=floor,
                                            ceiling=ceiling,
                                            mode=Mode.DRAIN if drain else Mode.NORMAL))
        elif event[0] == "pressure":
            _, queue, mem, kv = event
            memory.used = mem
            sup.on_step(EngineStats(queue_depth=queue, kv_usage=kv))
        elif event[0] == "wait":
            clock[0] += event[1]
            sup.on_step(EngineStats())
        else:
            (sup.stream_opened if event[1] else sup.stream_closed)()
        assert sup.control.floor >= bound - 1e-9
        assert sup.control.ceiling >= sup.control.floor
        assert math.isfinite(sup.budget) and bound - 1e-9 <= sup.budget <= 1.0
        assert all(b >= bound - 1e-9 for b in actuator.applied)


@pytest.mark.parametrize("value", ["0", "1.5", "-0.1", "nan"])
def test_serve_refuses_a_min_budget_outside_0_1(value):
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    args = parser.parse_args(["--min-budget", value])
    with pytest.raises(UserError, match="--min-budget"):
        serve.run(args)
