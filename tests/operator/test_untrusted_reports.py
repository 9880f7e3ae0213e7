"""Reports are untrusted input: whatever numbers a worker sends, the budget the control law hands
out stays finite and inside the quality bounds, and one worker cannot move the others' floor."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings, strategies as st

from dynasparse_operator import control_law
from dynasparse_operator.law_types import LawParams, LawState, PodFacts, PodReport
from dynasparse_operator.wire import report_from_pb
from dynasparse_proto import control_pb2

anything = st.floats(allow_nan=True, allow_infinity=True)
counts = st.integers(min_value=0, max_value=2**64 - 1)


def report_pb(ttft_p95=100.0, count=20, min_budget=0.3, curve=((0.3, 0.4), (1.0, 0.0)), **fields):
    msg = control_pb2.Report(
        pod_name="w", ttft=control_pb2.LatencySummary(p95_ms=ttft_p95, count=count),
        inter_token=control_pb2.LatencySummary(p95_ms=ttft_p95 / 10, count=count),
        min_budget=min_budget, **fields)
    msg.quality_curve.extend(control_pb2.QualityPoint(budget=b, expected_loss=l) for b, l in curve)
    return msg


@pytest.mark.parametrize("bad", [math.nan, math.inf, -1.0])
def test_a_latency_that_is_not_a_finite_non_negative_number_is_dropped(bad, caplog):
    rep = report_from_pb(report_pb(ttft_p95=bad), 0.0)
    assert rep.ttft_p95_ms == 0.0 and rep.samples == 0
    assert "dropped" in caplog.text


def test_quality_curve_points_out_of_range_are_dropped_and_the_rest_sorted():
    rep = report_from_pb(report_pb(curve=((1.0, 0.0), (math.nan, 0.1), (0.5, math.inf),
                                          (2.0, 0.0), (0.4, -1.0), (0.3, 0.4))), 0.0)
    assert rep.quality_curve == ((0.3, 0.4), (1.0, 0.0))


def test_a_nan_ttft_does_not_make_the_budget_nan():
    params = LawParams(ttft_slo_ms=500, min_budget=0.3)
    nan = PodReport("a", 0.0, ttft_p95_ms=math.nan, samples=50)
    decision = control_law.decide({"a": nan}, [PodFacts("a")], params, LawState(budget=0.8), 0.1)
    assert math.isfinite(decision.to_budget) and 0.3 <= decision.to_budget <= 1.0
    assert decision.commands["a"].target_budget == decision.to_budget
    assert decision.worst_ratio is None, "a NaN sample is no sample"


def test_a_nan_budget_in_the_resumed_state_falls_back_to_the_ceiling():
    params = LawParams(ttft_slo_ms=500, min_budget=0.3, max_budget=0.9)
    decision = control_law.decide({}, [PodFacts("a")], params, LawState(budget=math.nan), 0.0)
    assert decision.to_budget == pytest.approx(0.9)


def test_one_worker_reporting_min_budget_1_raises_only_its_own_floor():
    params = LawParams(ttft_slo_ms=500, min_budget=0.3)
    reports = {"a": PodReport("a", 0.0, min_budget=0.3), "b": PodReport("b", 0.0, min_budget=1.0),
               "c": PodReport("c", 0.0, min_budget=0.3)}
    pods = [PodFacts(n) for n in reports]
    decision = control_law.decide(reports, pods, params, LawState(budget=0.5), 0.1)
    assert decision.floor == pytest.approx(0.3)
    assert decision.commands["a"].target_budget == decision.to_budget < 1.0
    assert decision.commands["a"].floor == pytest.approx(0.3)
    assert decision.commands["b"].target_budget == 1.0 and decision.commands["b"].floor == 1.0


def test_a_max_budget_below_the_quality_floor_keeps_the_floor_and_says_so():
    params = LawParams(ttft_slo_ms=500, min_budget=0.6, max_budget=0.4)
    decision = control_law.decide({}, [PodFacts("a")], params, LawState(budget=0.5), 0.0)
    assert decision.to_budget == pytest.approx(0.6) and decision.ceiling == pytest.approx(0.6)
    assert decision.problems == ("maxBudget 0.40 is below the quality floor 0.60 (minBudget 0.60): "
                                 "budgets stay at 0.60; raise maxBudget or relax the quality bound",)


@st.composite
def pod_reports(draw, name):
    return PodReport(
        name, received_at=draw(st.floats(min_value=-10, max_value=10)),
        ttft_p95_ms=draw(anything), inter_token_p95_ms=draw(anything),
        samples=draw(st.integers(0, 1000)), inter_token_samples=draw(st.integers(-1, 1000)),
        queue_depth=draw(st.integers(0, 1000)), applied_budget=draw(anything),
        min_budget=draw(anything),
        quality_curve=tuple(draw(st.lists(st.tuples(anything, anything), max_size=4))))


@settings(max_examples=400, deadline=None)
@given(reports=st.lists(pod_reports("x"), min_size=0, max_size=3),
       state_budget=anything, last_error=anything,
       min_budget=st.one_of(st.none(), st.floats(min_value=0.01, max_value=1.0)),
       max_loss=st.one_of(st.none(), st.floats(min_value=0.0, max_value=2.0)),
       max_budget=st.floats(min_value=0.01, max_value=1.0),
       now=st.floats(min_value=0, max_value=100))
def test_whatever_the_reports_say_every_budget_is_finite_and_within_the_bounds(
        reports, state_budget, last_error, min_budget, max_loss, max_budget, now):
    named = {f"p{i}": PodReport(**{**r.__dict__, "name": f"p{i}"}) for i, r in enumerate(reports)}
    pods = [PodFacts(n) for n in named] + [PodFacts("silent")]
    params = LawParams(ttft_slo_ms=500, inter_token_slo_ms=50, min_budget=min_budget,
                       max_loss=None if min_budget is not None else max_loss,
                       max_budget=max_budget)
    state = LawState(budget=state_budget, last_error=last_error)
    decision = control_law.decide(named, pods, params, state, now)
    assert math.isfinite(decision.to_budget)
    assert decision.floor - 1e-9 <= decision.to_budget <= decision.ceiling + 1e-9
    if min_budget is not None:
        assert decision.floor >= min_budget - 1e-9, "the CR's quality bound always holds"
    for cmd in decision.commands.values():
        assert all(math.isfinite(v) for v in (cmd.target_budget, cmd.floor, cmd.ceiling))
        assert 0.0 <= cmd.floor <= cmd.target_budget <= cmd.ceiling <= 1.0
        if min_budget is not None:
            assert cmd.floor >= min_budget - 1e-9
    again = control_law.decide(named, pods, params, decision.state, now + 5.0)
    assert math.isfinite(again.to_budget)


@settings(max_examples=300, deadline=None)
@given(ttft=anything, itl=anything, count=counts, min_budget=anything, applied=anything,
       loss=anything, curve=st.lists(st.tuples(anything, anything), max_size=5))
def test_every_field_of_a_converted_report_is_finite_and_in_range(ttft, itl, count, min_budget,
                                                                   applied, loss, curve):
    msg = control_pb2.Report(
        ttft=control_pb2.LatencySummary(p95_ms=ttft, count=count),
        inter_token=control_pb2.LatencySummary(p95_ms=itl, count=count),
        min_budget=min_budget, applied_budget=applied, expected_quality_loss=loss)
    msg.quality_curve.extend(control_pb2.QualityPoint(budget=b, expected_loss=l) for b, l in curve)
    rep = report_from_pb(msg, 1.0, "w")
    for value in (rep.ttft_p95_ms, rep.inter_token_p95_ms, rep.min_budget, rep.applied_budget,
                  rep.expected_loss):
        assert math.isfinite(value) and value >= 0.0
    assert 0.0 <= rep.min_budget <= 1.0 and 0.0 <= rep.applied_budget <= 1.0
    assert 0 <= rep.samples < 2**31 and 0 <= rep.inter_token_samples < 2**31
    assert all(0 < b <= 1 and math.isfinite(l) and l >= 0 for b, l in rep.quality_curve)
