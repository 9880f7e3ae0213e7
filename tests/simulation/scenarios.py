"""The traces the control loop is judged on, sized against the pods' dense capacity.

Three pods of 7.8 requests/s dense (23.4 requests/s together, 48.7 at the 0.3 floor through the
H200 batch-32 curve); p95 TTFT SLO 500 ms; quality floor 0.3; the daemon's 2 s control interval.
"""

from __future__ import annotations

from dynasparse_operator.law_types import LawParams
from tests.simulation.harness import Scenario

SLO_MS = 500.0
QUALITY_FLOOR = 0.3
PARAMS = LawParams(ttft_slo_ms=SLO_MS, min_budget=QUALITY_FLOOR, interval_s=2.0)
DENSE_CAPACITY = 3 * 7.8


def _step(base: float, factor: float, at: float):
    return lambda t: base * (factor if t >= at else 1.0)


def _ramp(start: float, end: float, t0: float, t1: float):
    return lambda t: start + (end - start) * min(1.0, max(0.0, (t - t0) / (t1 - t0)))


SCENARIOS = {
    "steady": Scenario("steady", lambda t: 0.95 * DENSE_CAPACITY, 300.0),
    "sparse": Scenario("sparse", lambda t: 0.4, 300.0),
    "sparse-slow": Scenario("sparse-slow", lambda t: 0.4, 300.0, slow_prefill_s=0.55),
    "step-3x": Scenario("step-3x", _step(0.45 * DENSE_CAPACITY, 3.0, 60.0), 240.0,
                        overload_from=60.0),
    "ramp": Scenario("ramp", _ramp(10.0, 40.0, 20.0, 220.0), 260.0),
    "noisy": Scenario("noisy", lambda t: 0.8 * DENSE_CAPACITY, 300.0, noise_sigma=0.5),
    "preempt": Scenario("preempt", lambda t: 0.6 * DENSE_CAPACITY, 200.0, preempt_at=60.0,
                        overload_from=60.0),
    "restart": Scenario("restart", _step(0.45 * DENSE_CAPACITY, 3.0, 60.0), 200.0,
                        restart_at=70.0, overload_from=60.0),
}
"""Name -> trace; `steady`, `sparse` and `noisy` are the ones that must not hunt."""
