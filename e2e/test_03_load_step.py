"""Scenario 3: open-loop load through the pods' OpenAI API; raise it 3x -> the budget drops and the
p95 comes back under the SLO without new pods; lower it -> the budget relaxes.

The SLO is set from the p95 measured at the base load (x1.5), so the test holds on any machine speed.
Knob: DYNASPARSE_E2E_BASE_RATE (requests/s across the pods, default 0.2; see e2e_support).
"""

from __future__ import annotations

import time

import pytest
from e2e_load import OpenLoopLoad
from e2e_support import BASE_RATE, apply_model, model_status, needs, ready_worker_pods

from dynasparse.devcluster.fixture import wait_until



def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] if ordered else 0.0


@pytest.mark.xfail(strict=False, reason=(
    "issue 7, open: on a 2-core CI box a 3x step of 0.2 req/s did not push the workers' p95 over the "
    "SLO band within 60 s, so the budget did not drop; the rate must be sized from measured capacity"))
def test_a_3x_load_step_lowers_the_budget_and_relaxes_after(operator_running, namespace):
    needs("dynasparse_worker.commands.serve", "the worker's `dynasparse serve` command")
    cluster = operator_running
    spec = {"model": "default", "replicas": 2, "slo": {"ttftP95Ms": 60000}, "quality": {"minBudget": 0.2},
            "control": {"intervalSeconds": 1, "responsiveness": 0.8}}
    apply_model(cluster, namespace, "step", spec)
    wait_until(lambda: len(ready_worker_pods(cluster, namespace, "step")) == 2, 420, "2 workers Ready", interval=2)

    base = OpenLoopLoad(cluster, namespace, "step", rate=BASE_RATE).start()
    time.sleep(20)
    measured = base.stop()
    slo_ms = max(50.0, 1.5 * 1000 * p95(measured.latencies_s))
    spec["slo"]["ttftP95Ms"] = slo_ms
    apply_model(cluster, namespace, "step", spec)
    budget_base = wait_until(lambda: model_status(cluster, namespace, "step").get("budget"), 30, "a budget in status")

    burst = OpenLoopLoad(cluster, namespace, "step", rate=3 * BASE_RATE).start()
    try:
        wait_until(lambda: model_status(cluster, namespace, "step").get("budget", 1.0) < budget_base, 60,
                   "the budget to drop under the 3x load")
        wait_until(lambda: 0 < model_status(cluster, namespace, "step").get("p95TtftMs", slo_ms + 1) <= slo_ms, 90,
                   f"the p95 TTFT to come back under the SLO ({slo_ms:.0f} ms)")
        assert len(ready_worker_pods(cluster, namespace, "step")) == 2  # no new pods
        low = model_status(cluster, namespace, "step")["budget"]
    finally:
        result = burst.stop()
    assert result.failed == 0, result.errors[:5]
    relax = OpenLoopLoad(cluster, namespace, "step", rate=BASE_RATE / 3).start()
    try:
        wait_until(lambda: model_status(cluster, namespace, "step").get("budget", 0) > low, 90,
                   "the budget to relax when the load drops")
    finally:
        relax.stop()
