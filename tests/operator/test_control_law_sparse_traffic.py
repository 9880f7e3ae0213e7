"""Sparse traffic is not idleness: too few finished requests to judge must hold the budget while
requests run or wait, or while the few samples there are sit near the SLO; only a pod with nothing
to protect relaxes."""

from dynasparse_operator.control_law import decide
from dynasparse_operator.law_types import LawParams, LawState, PodFacts, PodReport

PARAMS = LawParams(ttft_slo_ms=500.0, min_budget=0.3)
PODS = [PodFacts("w0", "n0"), PodFacts("w1", "n1")]


def _decide(running: int, queued: int = 0, p95_ms: float = 100.0):
    reports = {p.name: PodReport(p.name, received_at=10.0, ttft_p95_ms=p95_ms, samples=2,
                                 queue_depth=queued, running=running, applied_budget=0.5)
               for p in PODS}
    return decide(reports, PODS, PARAMS, LawState(budget=0.5), now=10.0)


def test_few_samples_with_requests_running_hold_the_budget():
    decision = _decide(running=1)
    assert decision.to_budget == 0.5 and decision.kind == "hold"
    assert "2 running" in decision.reason


def test_few_samples_with_requests_waiting_hold_the_budget():
    decision = _decide(running=0, queued=3)
    assert decision.to_budget == 0.5 and decision.kind == "hold"


def test_few_samples_near_the_slo_hold_the_budget_even_with_nothing_running():
    decision = _decide(running=0, p95_ms=450.0)
    assert decision.to_budget == 0.5 and decision.kind == "hold"
    assert "near the SLO" in decision.reason


def test_few_fast_samples_with_nothing_running_or_waiting_relax_towards_the_ceiling():
    decision = _decide(running=0)
    assert decision.to_budget > 0.5 and decision.kind == "relax"
    assert "idle" in decision.reason
