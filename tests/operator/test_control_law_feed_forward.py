"""Feed-forward and per-pod commands of the control law: pressure, cordon, replacement replicas."""

from __future__ import annotations

import dataclasses

import pytest

from dynasparse_operator.control_law import decide, violates_slo
from dynasparse_operator.law_types import LawParams, LawState, PodFacts, PodReport

PARAMS = LawParams(ttft_slo_ms=500, inter_token_slo_ms=50, min_budget=0.4)


def report(name, ttft=300.0, itl=30.0):
    return PodReport(name=name, received_at=10.0, ttft_p95_ms=ttft, inter_token_p95_ms=itl, samples=40)


def test_node_pressure_lowers_only_that_pods_ceiling_and_says_why():
    pods = [PodFacts("a", "n1"), PodFacts("b", "n2", pressure=("MemoryPressure",))]
    d = decide({"a": report("a"), "b": report("b")}, pods, PARAMS, LawState(budget=0.9), now=10.0)
    assert d.commands["a"].ceiling == 1.0 and d.commands["a"].target_budget == pytest.approx(0.9)
    assert d.commands["b"].ceiling == pytest.approx(0.75) and d.commands["b"].target_budget == pytest.approx(0.75)
    assert d.events == ("node n2 has MemoryPressure: ceiling 1.00 → 0.75 for pod b",)
    assert d.commands["b"].reason.startswith("node n2 has MemoryPressure")


def test_cordoned_node_drains_its_pods_to_the_floor():
    pods = [PodFacts("a", "n1", disruption=("cordoned",)), PodFacts("b", "n2")]
    d = decide({"a": report("a"), "b": report("b")}, pods, PARAMS, LawState(budget=0.8), now=10.0)
    assert d.commands["a"].mode == "drain" and d.commands["a"].target_budget == pytest.approx(0.4)
    assert d.commands["b"].mode == "normal" and d.to_budget == pytest.approx(0.4)  # 0.8 × 1/2, floored
    assert d.kind == "disruption" and "node n1 has cordoned: draining 1 pod" in d.reason


def test_replacement_replicas_only_when_the_spec_asks():
    pods = [PodFacts("a", "n1", disruption=("karpenter.sh/disrupted",)), PodFacts("b"), PodFacts("c")]
    reports = {n: report(n) for n in "abc"}
    assert decide(reports, pods, PARAMS, LawState(), now=1.0).surge_replicas == 0
    asked = LawParams(ttft_slo_ms=500, min_budget=0.4, replace_disrupted_pods=True)
    assert decide(reports, pods, asked, LawState(), now=1.0).surge_replicas == 1


def test_inter_token_slo_alone_triggers_a_cut():
    slow = report("a", ttft=100.0, itl=90.0)
    assert violates_slo(slow, PARAMS)
    d = decide({"a": slow}, [PodFacts("a")], PARAMS, LawState(budget=0.9), now=10.0)
    assert d.to_budget < 0.9 and d.reason.startswith("p95 inter-token 90 ms > SLO 50 ms")


def test_too_few_samples_say_nothing_about_the_slo():
    quiet = PodReport(name="a", received_at=10.0, ttft_p95_ms=5000, samples=2)
    assert not violates_slo(quiet, PARAMS)


def test_too_few_samples_relax_only_when_nothing_waits_and_the_few_are_fast():
    # so slow that few requests finish inside the window, with more queued: do not relax
    swamped = PodReport(name="a", received_at=10.0, ttft_p95_ms=15000, samples=2, queue_depth=6)
    held = decide({"a": swamped}, [PodFacts("a")], PARAMS, LawState(budget=0.5), now=11.0)
    assert held.to_budget == 0.5 and "6 queued" in held.reason
    # nothing waiting, but the few samples are slow: still no relaxing
    slow = dataclasses.replace(swamped, queue_depth=0)
    held = decide({"a": slow}, [PodFacts("a")], PARAMS, LawState(budget=0.5), now=11.0)
    assert held.to_budget == 0.5 and "near the SLO" in held.reason
    # light load, nothing waiting, the few samples fast: relax towards dense
    light = dataclasses.replace(swamped, queue_depth=0, ttft_p95_ms=100)
    relaxed = decide({"a": light}, [PodFacts("a")], PARAMS, LawState(budget=0.5), now=11.0)
    assert relaxed.to_budget > 0.5 and "none queued" in relaxed.reason


def test_a_cut_under_the_slo_says_the_p95_is_above_the_band():
    near = report("a", ttft=490.0)  # under the 500 ms SLO, above the band around the setpoint
    d = decide({"a": near}, [PodFacts("a")], PARAMS, LawState(budget=1.0), now=11.0)
    assert d.to_budget < 1.0 and "≤ SLO 500 ms, above the" in d.reason


def test_a_budget_moved_by_its_bounds_says_so():
    capped = LawParams(ttft_slo_ms=500, min_budget=0.4, max_budget=0.7)
    d = decide({}, [PodFacts("a")], capped, LawState(budget=1.0), now=1.0)
    assert d.to_budget == pytest.approx(0.7) and d.kind == "bounds"
    assert d.reason == "bounds [0.40, 0.70] (minBudget 0.40): budget 1.00 → 0.70"


def test_pressure_never_pushes_the_ceiling_under_the_quality_floor():
    dense_only = PodReport(name="a", received_at=10.0, samples=0, min_budget=1.0)
    d = decide({"a": dense_only}, [PodFacts("a", "n1", pressure=("DiskPressure",))], PARAMS,
               LawState(), now=10.0)
    assert d.commands["a"].ceiling == 1.0 and d.commands["a"].floor == 1.0
    assert d.events == ("node n1 has DiskPressure: ceiling held at the quality floor 1.00 for pod a",)
