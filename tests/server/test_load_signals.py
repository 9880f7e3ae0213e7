"""The worker's load signals: arrivals derived from the engine's counts, the oldest waiting
request, dense work per request, and misses measured only under the budget now applied."""

from __future__ import annotations

import pytest

from dynasparse_proto.contract import Command
from dynasparse_worker.control.load import LoadTracker
from dynasparse_worker.control.service import report_from_snapshot
from dynasparse_worker.control.supervisor import Supervisor
from dynasparse_worker.engine.types import EngineStats


def steady(tracker, *, seconds, rate, running, speed=1.0, start=0.0, dt=0.05):
    """`rate` arrivals per second join the waiting count and start running at once; as many
    finish as arrive, so `running` stays put."""
    t, carry = start, 0.0
    while t < start + seconds - 1e-9:
        t = round(t + dt, 9)
        carry += rate * dt
        while carry >= 1.0:
            carry -= 1.0
            tracker.on_finished(t)  # one leaves as one arrives
        tracker.on_step(t, 0, running, speed)
    return t


def test_arrivals_are_the_growth_of_waiting_and_running_plus_the_finished():
    tracker = LoadTracker(slots=32)
    now = steady(tracker, seconds=12.0, rate=5.0, running=20)
    summary = tracker.summary(now, slo_s=0.5)
    assert summary.arrival_rate_long == pytest.approx(5.0, rel=0.05)
    assert summary.arrival_rate_short == pytest.approx(5.0, rel=0.1)


def test_a_step_in_arrivals_shows_in_the_short_window_first():
    tracker = LoadTracker(slots=32)
    now = steady(tracker, seconds=12.0, rate=5.0, running=20)
    now = steady(tracker, seconds=2.0, rate=15.0, running=20, start=now)
    summary = tracker.summary(now, slo_s=0.5)
    assert summary.arrival_rate_short == pytest.approx(15.0, rel=0.1)
    assert summary.arrival_rate_long < 8.0


def test_work_per_request_is_busy_slot_time_at_dense_speed_per_finished_request():
    tracker = LoadTracker(slots=32)
    # 20 running, 5 finishing per second: each holds its slot 4 s; at speed 2 that is 8 dense s
    now = steady(tracker, seconds=30.0, rate=5.0, running=20, speed=2.0)
    assert tracker.summary(now, 0.5).work_per_request_s == pytest.approx(8.0, rel=0.05)


def test_work_per_request_is_not_guessed_from_the_first_seconds():
    tracker = LoadTracker(slots=32)
    now = steady(tracker, seconds=5.0, rate=5.0, running=20)
    assert tracker.summary(now, 0.5).work_per_request_s == 0.0


def test_the_oldest_waiting_request_ages_and_counts_as_late_once_past_the_slo():
    tracker = LoadTracker(slots=4)
    tracker.on_step(1.0, 3, 4, 1.0)  # three join the queue at 1.0 s
    tracker.on_step(1.4, 4, 4, 1.0)  # a fourth at 1.4 s
    tracker.on_step(1.7, 3, 4, 1.0)  # the oldest starts
    summary = tracker.summary(1.8, slo_s=0.5)
    assert summary.oldest_waiting_s == pytest.approx(0.8)
    assert summary.late_since_change == 2 and summary.samples_since_change == 2


def test_misses_of_requests_that_arrived_before_a_budget_change_are_not_counted_after_it():
    tracker = LoadTracker(slots=4)
    tracker.on_first_token(10.0, 0.9, slo_s=0.5)  # arrived at 9.1
    tracker.on_budget_changed(9.5)
    tracker.on_first_token(10.2, 0.6, slo_s=0.5)  # arrived at 9.6, after the change: late
    tracker.on_first_token(10.3, 0.1, slo_s=0.5)
    summary = tracker.summary(10.3, slo_s=0.5)
    assert (summary.samples_since_change, summary.late_since_change) == (2, 1)


class _Actuator:
    budget = 1.0

    def set_budget(self, budget):
        self.budget = budget
        return 0.0

    def min_budget(self):
        return 0.2

    def quality_curve(self):
        return [(0.2, 0.1), (1.0, 0.0)]

    def speed_curve(self):
        return [(0.2, 3.0), (1.0, 1.0), (0.5, float("nan"))]


def test_the_supervisor_reports_its_load_and_speed_curve_and_counts_misses_against_the_sent_slo():
    clock = [100.0]
    sup = Supervisor(_Actuator(), pod_name="w0", model_name="m", slots=8, clock=lambda: clock[0])
    sup.apply_update(Command(epoch=1, sequence=1, target_budget=0.5, floor=0.2,
                                    ceiling=1.0, ttft_p95_ms=500.0))
    clock[0] = 101.0
    sup.on_step(EngineStats(queue_depth=2, running=3))
    clock[0] = 101.6
    sup.record_first_token(0.55)  # arrived after the change, late against the 500 ms SLO
    report = report_from_snapshot(sup.snapshot())
    assert report.load.slots == 8
    assert report.load.oldest_waiting_s == pytest.approx(0.6)
    assert (report.load.samples_since_change, report.load.late_since_change) == (3, 3)
    assert [(p.budget, p.speedup) for p in report.load.speed_curve] == [(0.2, 3.0), (1.0, 1.0)]


def test_a_gated_worker_reports_the_speed_its_engine_measured_for_its_largest_batch():
    from dynasparse_worker.server.actuators import GatedActuator
    from tests.engine.test_sparse_speed_table import PENALTY, SCRIPT, ScriptedTimer, _engine

    _, engine = _engine(ScriptedTimer(SCRIPT, PENALTY))
    curve = dict(GatedActuator(engine).speed_curve())
    assert curve[1.0] == pytest.approx(1.0)
    assert 0.75 not in curve  # measured slower than dense: not offered, so not reported
    assert curve[0.5] == pytest.approx(10.0 / 8.0) and curve[0.35] == pytest.approx(10.0 / 6.0)
