"""The fast loop as a pure function: tighten at once under pressure, relax with hysteresis, keep the
last bounds when the operator is gone, never leave the bounds."""

from dynasparse_proto.contract import Mode
from dynasparse_worker.control.bounds import ControlState
from dynasparse_worker.control.fast_loop import FastLoopConfig, LoopState, Signals, decide

CFG = FastLoopConfig(queue_high=8, queue_low=2, relax_hold_s=2.0, relax_step=0.05,
                     tighten_step=0.1, tighten_cooldown_s=0.5)
BOUNDS = ControlState(target=0.9, floor=0.4, ceiling=0.95)
GB = 1 << 30


def run(signals, loop=None, control=BOUNDS):
    return decide(signals, control, loop or LoopState(budget=0.9), CFG)


def test_budget_tightens_on_the_first_step_a_queue_spike_is_seen():
    loop, decision = run(Signals(now=0.0, queue_depth=16))
    assert decision is not None and decision.source == "fast-loop"
    assert loop.budget < 0.9
    assert "queue depth 16" in decision.reason and "0.40..0.95" in decision.reason


def test_a_bigger_spike_tightens_more():
    small, _ = run(Signals(now=0.0, queue_depth=8))
    big, _ = run(Signals(now=0.0, queue_depth=24))
    assert big.budget < small.budget


def test_tightening_never_crosses_the_floor():
    loop = LoopState(budget=0.9)
    for i in range(50):
        loop, _ = run(Signals(now=i * 1.0, queue_depth=100), loop)
    assert loop.budget == BOUNDS.floor


def test_steady_pressure_tightens_again_only_after_the_cooldown():
    loop, first = run(Signals(now=0.0, queue_depth=10))
    loop2, again = run(Signals(now=0.1, queue_depth=10), loop)
    assert first is not None and again is None and loop2.budget == loop.budget
    loop3, later = run(Signals(now=0.6, queue_depth=10), loop2)
    assert later is not None and loop3.budget < loop.budget


def test_memory_spike_tightens_and_a_critical_one_goes_straight_to_the_floor():
    loop, d = run(Signals(now=0.0, memory_used_bytes=int(0.93 * GB), memory_total_bytes=GB))
    assert d is not None and "memory" in d.reason and loop.budget < 0.9
    loop, d = run(Signals(now=0.0, memory_used_bytes=int(0.99 * GB), memory_total_bytes=GB))
    assert loop.budget == BOUNDS.floor


def test_budget_holds_between_the_low_and_high_marks():
    loop, _ = run(Signals(now=0.0, queue_depth=10))
    tightened = loop.budget
    for t in range(1, 20):
        loop, d = run(Signals(now=float(t), queue_depth=5), loop)
        assert d is None
    assert loop.budget == tightened


def test_budget_relaxes_to_the_target_only_after_pressure_stays_clear():
    loop, _ = run(Signals(now=0.0, queue_depth=10))
    loop, d = run(Signals(now=0.5, queue_depth=0), loop)
    assert d is None  # cleared, but not for long enough
    loop, d = run(Signals(now=2.6, queue_depth=0), loop)
    assert d is not None and d.to_budget > d.from_budget
    for t in range(3, 40):
        loop, _ = run(Signals(now=float(t), queue_depth=0), loop)
    assert loop.budget == BOUNDS.target  # never above the operator's target


def test_without_pressure_the_budget_stays_at_the_operators_target_however_long_it_is_alone():
    loop = None
    for hour in range(24 * 31):  # a month without an operator update
        loop, d = run(Signals(now=3600.0 * hour), loop)
        assert d is None
    assert loop.budget == BOUNDS.target


def test_drain_moves_to_the_floor():
    control = ControlState(target=0.9, floor=0.4, ceiling=0.95, mode=Mode.DRAIN)
    loop, d = run(Signals(now=0.0), control=control)
    assert d is not None and d.source == "drain" and loop.budget == 0.4


def test_a_lowered_target_is_followed_at_once():
    control = ControlState(target=0.6, floor=0.4, ceiling=0.95)
    loop, d = run(Signals(now=0.0), control=control)
    assert loop.budget == 0.6 and d is not None
