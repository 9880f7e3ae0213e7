"""Prometheus metrics of the operator (metrics.py): budgets, decisions by kind, SLO attainment."""

from __future__ import annotations

from prometheus_client import generate_latest

from dynasparse_operator.control_law import decide
from dynasparse_operator.law_types import LawParams, LawState, PodFacts, PodReport
from dynasparse_operator.metrics import OperatorMetrics


def test_a_decision_shows_up_as_budget_decision_and_slo_samples():
    metrics = OperatorMetrics()
    params = LawParams(ttft_slo_ms=500, min_budget=0.4)
    report = PodReport(name="a", received_at=1.0, ttft_p95_ms=900, samples=20)
    d = decide({"a": report}, [PodFacts("a", "n1")], params, LawState(budget=0.9), now=1.0)
    metrics.observe("ns", "chat", d, open_streams=1)
    text = generate_latest(metrics.registry).decode()
    assert f'dynasparse_operator_budget{{model="chat",namespace="ns"}} {d.to_budget}' in text
    assert 'dynasparse_operator_decisions_total{changed="true",kind="slo-violation",model="chat",namespace="ns"} 1.0' in text
    assert 'dynasparse_operator_slo_checks_total{met="false",model="chat",namespace="ns"} 1.0' in text
    assert 'dynasparse_operator_pod_target_budget{mode="normal",model="chat",namespace="ns",pod="a"}' in text
    metrics.forget_pod("ns", "chat", "a")
    assert 'pod="a"' not in generate_latest(metrics.registry).decode()
