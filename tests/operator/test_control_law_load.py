"""The control law with the workers' load signals: feed-forward through the queueing model and the
measured speed curve, panic on a jump, relaxing only on a window of lower load, the miss trim."""

from __future__ import annotations

import datetime as dt
import math

import pytest

from dynasparse_operator import wire
from dynasparse_operator.control_law import decide, needs_decision, violates_slo
from dynasparse_operator.law_types import LawParams, LawState, PodFacts, PodReport
from dynasparse_proto.contract import LoadSignals
from dynasparse_operator.miss_trim import wilson
from dynasparse_operator.queueing import erlang_c, speed_for_tail, wait_tail
from dynasparse_operator.status import StatusInput, status_patch
from dynasparse_proto import control_pb2

CURVE = ((0.3, 2.08), (0.5, 1.56), (0.75, 1.18), (1.0, 1.0))
PARAMS = LawParams(ttft_slo_ms=500, min_budget=0.3)
PODS = [PodFacts("a"), PodFacts("b"), PodFacts("c")]
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def load(rate, short=None, *, work=4.1, slots=32, oldest=0.0, samples=0, late=0, curve=CURVE):
    return LoadSignals(arrival_rate_short=rate if short is None else short, arrival_rate_long=rate,
                       oldest_waiting_s=oldest, work_per_request_s=work, slots=slots,
                       samples_since_change=samples, late_since_change=late, speed_curve=curve)


def reports(at, per_pod_rate, *, queued=0, **kw):
    return {p.name: PodReport(name=p.name, received_at=at, ttft_p95_ms=100.0, samples=50,
                              queue_depth=queued, load=load(per_pod_rate, **kw)) for p in PODS}


def run(per_pod_rates, *, start=None, pods=PODS, every=2.0, **kw):
    """Decisions every `every` seconds, one per given per-pod rate; returns them all."""
    state, out = start or LawState(), []
    for i, rate in enumerate(per_pod_rates):
        now = 100.0 + every * i
        d = decide(reports(now, rate, **kw), pods, PARAMS, state, now)
        state = d.state
        out.append(d)
    return out


# --- the queueing model ---------------------------------------------------------------------------

def test_erlang_c_of_one_slot_is_its_utilisation_and_full_slots_always_wait():
    assert erlang_c(1, 0.4) == pytest.approx(0.4)
    assert erlang_c(8, 8.0) == 1.0 and erlang_c(8, 0.0) == 0.0


def test_more_speed_means_fewer_long_waits_and_the_speed_found_meets_the_tail():
    assert wait_tail(7.0, 4.1 / 1.0, 32, 0.4) > wait_tail(7.0, 4.1 / 1.3, 32, 0.4)
    speed = speed_for_tail(7.0, 4.1, 32, 0.4, 0.02, 0.9)
    assert wait_tail(7.0, 4.1 / speed, 32, 0.4) <= 0.02 + 1e-9
    assert wait_tail(7.0, 4.1 / (speed * 0.97), 32, 0.4) > 0.02


# --- feed-forward ---------------------------------------------------------------------------------

def test_a_heavier_load_gets_a_lower_budget_at_once_through_the_measured_curve():
    light = run([2.0] * 12)[-1].to_budget
    heavy = run([7.4])[0]
    assert light == pytest.approx(1.0)
    assert 0.3 < heavy.to_budget < 0.9 and heavy.kind == "load"
    assert "req/s" in heavy.reason and f"budget {heavy.to_budget:.2f}" in heavy.reason


def test_no_traffic_trusts_the_model_and_relaxes_to_the_ceiling_after_a_window():
    ds = run([0.0] * 12, work=0.0, start=LawState(budget=0.5))
    relaxed = next(d for d in ds if d.changed)
    assert relaxed.to_budget == 1.0 and "no traffic" in relaxed.reason


def test_a_load_the_floor_cannot_carry_holds_the_floor_and_marks_the_model_degraded():
    d = run([30.0])[0]
    assert d.to_budget == pytest.approx(0.3) and "more than the floor gives" in d.reason
    conds = {c["type"]: c for c in status_patch(StatusInput(
        generation=1, desired_replicas=3, existing_pods=3, ready_pods=3, selector="s=1",
        decision=d, pods=PODS, reports=reports(100.0, 30.0), connected={p.name: True for p in PODS},
        ttft_slo_ms=500, previous_conditions=(), now=T0))["conditions"]}
    assert conds["Degraded"]["status"] == "True" and conds["Degraded"]["reason"] == "LoadBeyondFloor"
    assert "add replicas" in conds["Degraded"]["message"]
    assert run([3.0])[0].overloaded == ""


def test_without_a_measured_speed_curve_the_load_moves_nothing():
    assert run([7.4], curve=())[0].to_budget == 1.0


def test_a_pre_emption_counts_the_draining_pods_load_against_the_survivors():
    calm = run([5.0])[0].to_budget
    doomed = [PodFacts("a", disruption=("spot",)), PodFacts("b"), PodFacts("c")]
    d = run([5.0], pods=doomed)[0]
    assert d.to_budget < calm - 0.1 and d.commands["a"].mode == "drain"
    assert "survivors take their load" in d.reason


# --- panic and relaxing ---------------------------------------------------------------------------

def test_a_jump_in_the_short_window_tightens_at_once_and_wakes_the_law():
    jumped = reports(100.0, 3.5, short=10.0)
    assert needs_decision(jumped["a"], PARAMS) and not violates_slo(jumped["a"], PARAMS)
    d = decide(jumped, PODS, PARAMS, LawState(), 100.0)
    assert d.kind == "panic" and d.to_budget < 0.7 and "arrivals jumped" in d.reason


def test_a_waiting_request_aging_towards_the_slo_wakes_the_law():
    assert needs_decision(reports(100.0, 3.0, oldest=0.3)["a"], PARAMS)
    assert not needs_decision(reports(100.0, 3.0, oldest=0.05)["a"], PARAMS)


def test_first_tokens_confidently_late_wake_the_law_before_the_p95_has_five_samples():
    few = reports(100.0, 0.1, samples=3, late=3)["a"]
    assert needs_decision(few, PARAMS) and not violates_slo(few, PARAMS)


def test_noise_inside_the_band_never_moves_the_budget():
    rates = [7.0, 7.3, 6.8, 7.2, 6.9, 7.1] * 10
    changes = [d for d in run(rates)[1:] if d.changed]
    assert changes == []


def test_a_genuine_drop_to_a_third_relaxes_after_a_window_of_lower_load():
    ds = run([7.4] * 5 + [7.4 / 3] * 20)
    low = ds[4].to_budget
    relaxed = [d for d in ds[5:] if d.to_budget > low + 0.05]
    assert relaxed, "the budget must relax when the load falls to a third"
    first = ds.index(relaxed[0])
    assert (first - 5) * 2.0 >= PARAMS.relax_window_s - PARAMS.interval_s  # a whole window first
    assert relaxed[0].kind == "relax"


def test_nothing_relaxes_while_a_waiting_request_is_past_the_slo():
    ds = run([7.4] * 5 + [2.0] * 20, oldest=0.6)
    assert all(d.to_budget <= ds[4].to_budget + 1e-9 for d in ds[5:])


def test_a_restart_with_only_the_budget_resumes_without_relaxing():
    ds = run([7.4 / 3] * 5, start=LawState(budget=0.5, last_change_at=100.0))
    assert all(d.to_budget == pytest.approx(0.5) for d in ds)


# --- the miss trim --------------------------------------------------------------------------------

def test_a_few_late_first_tokens_among_many_trim_nothing():
    d = decide(reports(100.0, 2.0, samples=200, late=6), PODS, PARAMS,
               LawState(budget=1.0, load_budget=1.0), 100.0)
    assert d.to_budget == 1.0


def test_first_tokens_confidently_late_at_low_load_trim_the_budget():
    d = decide(reports(100.0, 0.1, samples=3, late=3, work=0.0), PODS, PARAMS,
               LawState(budget=1.0, load_budget=1.0), 100.0)
    assert d.to_budget == pytest.approx(0.85) and d.kind == "slo-violation"
    assert "9 of 9 first tokens over the SLO since the last change" in d.reason


def test_the_trim_stops_at_the_floor_without_winding_up():
    state = LawState(budget=0.3, load_budget=1.0)
    d = decide(reports(100.0, 0.1, samples=9, late=9, work=0.0), PODS, PARAMS, state, 100.0)
    assert d.to_budget == pytest.approx(0.3) and "at its floor, cannot cut further" in d.reason


def test_wilson_interval_needs_more_than_a_handful_to_be_sure():
    assert wilson(0, 0, 2.33) == (0.0, 1.0)
    low, high = wilson(1, 5, 2.33)
    assert low < 0.05 < high  # one late in five: could be within the SLO's 5 %
    assert wilson(5, 5, 2.33)[0] > 0.05


# --- the wire -------------------------------------------------------------------------------------

def test_load_signals_from_a_report_are_clamped_into_trusted_ranges():
    pb = control_pb2.Report(pod_name="a", load=control_pb2.LoadSignals(
        arrival_rate_short=math.nan, arrival_rate_long=-3.0, oldest_waiting_s=math.inf,
        work_per_request_s=2.0, slots=32, samples_since_change=4, late_since_change=9,
        speed_curve=[control_pb2.SpeedPoint(budget=0.5, speedup=1.5),
                     control_pb2.SpeedPoint(budget=2.0, speedup=9.0),
                     control_pb2.SpeedPoint(budget=0.3, speedup=math.nan)]))
    got = wire.report_from_pb(pb, 1.0).load
    assert got.arrival_rate_short == 0.0 and got.arrival_rate_long == 0.0
    assert math.isfinite(got.oldest_waiting_s)
    assert got.late_since_change == 4  # never more late than samples
    assert got.speed_curve == ((0.5, 1.5),)


def test_a_report_without_load_signals_leaves_the_feedback_law_in_charge():
    assert wire.report_from_pb(control_pb2.Report(pod_name="a"), 1.0).load is None


def test_light_traffic_with_no_miss_and_a_low_p95_gives_the_trim_back():
    state = LawState(budget=0.5, load_budget=1.0, last_change_at=0.0)
    # thirty first tokens, none late: too few for confidence that misses are under 5 %
    d = decide(reports(100.0, 0.5, samples=10, late=0, work=0.0), PODS, PARAMS, state, 100.0)
    assert d.to_budget == pytest.approx(0.525) and d.kind == "relax"
    late = decide(reports(100.0, 0.5, samples=10, late=1, work=0.0), PODS, PARAMS, state, 100.0)
    assert late.to_budget == pytest.approx(0.5)
