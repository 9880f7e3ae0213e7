"""Loop state -> status patch, conditions and Events (status.py); restart resumes from status."""

from __future__ import annotations

import datetime as dt

import pytest

from dynasparse_operator.control_law import decide
from dynasparse_operator.law_types import LawParams, LawState, PodFacts, PodReport
from dynasparse_operator.status import StatusInput, event_for, resume_budget, resume_state, status_patch

PARAMS = LawParams(ttft_slo_ms=500, min_budget=0.4, interval_s=2.0)
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def report(name, p95, budget=0.8, loss=0.03):
    return PodReport(name=name, received_at=100.0, ttft_p95_ms=p95, samples=50,
                     applied_budget=budget, expected_loss=loss)


def inputs(decision, pods, reports, previous=(), now=T0, ready=None):
    return StatusInput(generation=4, desired_replicas=len(pods), existing_pods=len(pods),
                       ready_pods=len(pods) if ready is None else ready, selector="s=1",
                       decision=decision, pods=pods, reports=reports,
                       connected={p.name: True for p in pods}, ttft_slo_ms=500,
                       previous_conditions=previous, now=now)


def test_violation_becomes_a_readable_decision_event_and_status():
    pods = [PodFacts("a", "n1"), PodFacts("b", "n2")]
    reports = {"a": report("a", 812), "b": report("b", 300)}
    d = decide(reports, pods, PARAMS, LawState(budget=0.8), now=100.0)
    assert d.reason.startswith("p95 TTFT 812 ms > SLO 500 ms: budget 0.80 → 0.")
    assert event_for(d) == ("Warning", "BudgetLowered", d.reason)
    st = status_patch(inputs(d, pods, reports))
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["SLOMet"]["status"] == "False" and conds["SLOMet"]["message"] == "p95 TTFT 812 ms > SLO 500 ms"
    assert all(c["observedGeneration"] == 4 for c in st["conditions"])
    assert conds["Ready"]["status"] == "True" and conds["Disrupted"]["status"] == "False"
    assert st["lastDecision"]["from"] == 0.8 and st["lastDecision"]["to"] == round(d.to_budget, 4)
    assert st["p95TtftMs"] == 812 and st["p95TtftText"] == "812ms" and st["readyText"] == "2/2"
    assert st["budgetText"] == f"{d.to_budget:.2f}" and st["ttftSloText"] == "500ms"
    assert [p["name"] for p in st["pods"]] == ["a", "b"] and st["pods"][0]["ttftP95Ms"] == 812


def test_disruption_event_names_the_node_and_the_notice():
    pods = [PodFacts("a", "n3", disruption=("aws-node-termination-handler/spot-itn",)),
            PodFacts("b", "n3", disruption=("aws-node-termination-handler/spot-itn",)),
            PodFacts("c", "n1"), PodFacts("d", "n2")]
    reports = {n: report(n, 380) for n in "abcd"}
    d = decide(reports, pods, PARAMS, LawState(budget=0.9), now=100.0)
    kind, reason, message = event_for(d)
    assert (kind, reason) == ("Warning", "Disruption")
    assert message.startswith("node n3 has aws-node-termination-handler/spot-itn: draining 2 pods")
    st = status_patch(inputs(d, pods, reports))
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Disrupted"]["status"] == "True" and "n3" in conds["Disrupted"]["message"]
    assert {p["name"]: p["state"] for p in st["pods"]} == {"a": "Draining", "b": "Draining",
                                                           "c": "Steered", "d": "Steered"}


def test_budget_pinned_at_floor_while_violating_is_degraded():
    pods = [PodFacts("a", "n1")]
    d = decide({"a": report("a", 2000)}, pods, PARAMS, LawState(budget=0.4), now=100.0)
    conds = {c["type"]: c for c in status_patch(inputs(d, pods, {"a": report("a", 2000)}))["conditions"]}
    assert conds["Degraded"]["status"] == "True" and conds["Degraded"]["reason"] == "AtQualityFloor"


def test_condition_keeps_its_transition_time_until_its_status_changes():
    pods = [PodFacts("a", "n1")]
    ok = decide({"a": report("a", 300)}, pods, PARAMS, LawState(budget=0.8), now=100.0)
    first = status_patch(inputs(ok, pods, {"a": report("a", 300)}))["conditions"]
    later = T0 + dt.timedelta(minutes=5)
    same = status_patch(inputs(ok, pods, {"a": report("a", 300)}, first, later))["conditions"]
    assert {c["type"]: c["lastTransitionTime"] for c in same} == \
        {c["type"]: c["lastTransitionTime"] for c in first}
    bad = decide({"a": report("a", 900)}, pods, PARAMS, LawState(budget=0.8), now=200.0)
    flipped = {c["type"]: c for c in status_patch(inputs(bad, pods, {"a": report("a", 900)}, first, later))["conditions"]}
    assert flipped["SLOMet"]["lastTransitionTime"] == "2026-01-01T00:05:00Z"


def test_no_reports_means_slo_unknown_and_missing_pods_not_ready():
    st = status_patch(inputs(None, [PodFacts("a")], {}, ready=0))
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["SLOMet"]["status"] == "Unknown" and conds["Ready"]["status"] == "False"
    assert st["budgetText"] == "-" and "budget" not in st


def test_restart_resumes_budget_from_status_not_dense():
    assert resume_budget({"budget": 0.55}) == 0.55
    assert resume_budget({"lastDecision": {"to": 0.6}}) == 0.6
    assert resume_budget(None) == 1.0 and resume_budget({"budget": 7}) == 1.0


def test_restart_does_not_subtract_already_drained_capacity_twice():
    pods = [PodFacts("a", "n3", disruption=("karpenter.sh/disrupted",)), PodFacts("b", "n1"),
            PodFacts("c", "n2")]
    reports = {n: report(n, 380) for n in "abc"}
    first = decide(reports, pods, PARAMS, LawState(budget=0.9), now=100.0)
    written = status_patch(inputs(first, pods, reports))
    state = resume_state(written)
    assert state.budget == pytest.approx(first.to_budget, abs=1e-4) and state.draining == {"a"}
    again = decide(reports, pods, PARAMS, state, now=101.0)
    assert again.kind != "disruption" and again.to_budget == pytest.approx(state.budget)


def test_a_max_budget_below_the_quality_floor_is_reported_as_degraded_with_the_fix():
    pods = [PodFacts("a", "n1")]
    params = LawParams(ttft_slo_ms=500, min_budget=0.6, max_budget=0.4, interval_s=2.0)
    d = decide({"a": report("a", 300)}, pods, params, LawState(budget=0.8), now=100.0)
    assert d.problems, "the law should name the inverted bounds"
    conds = {c["type"]: c for c in status_patch(inputs(d, pods, {"a": report("a", 300)}))["conditions"]}
    assert conds["Degraded"]["status"] == "True"
    assert conds["Degraded"]["reason"] == "InvalidQualityBounds"
    assert conds["Degraded"]["message"] == "; ".join(d.problems)
