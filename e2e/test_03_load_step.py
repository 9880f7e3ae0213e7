"""Scenario 3: open-loop load through the pods' OpenAI API with the `openai` client; raise it 3x ->
the budget drops and the p95 comes back under the SLO without new pods; lower it -> the budget
relaxes.

The load is sized from what the workers serve on this machine, measured first, so the step means
the same thing on a 2-core CI box and on a fast workstation:

1. A closed-loop probe (e2e_load.probe_capacity) measures the pods' dense throughput, with as many
   clients per pod as the workers batch under the step (the workers batch, so throughput grows with
   concurrency; a one-client probe would undersize the overload).
2. The base rate is OVERLOAD/3 of that, so 3x the base is OVERLOAD x what dense serving sustains:
   a queue builds and the workers' TTFT grows until the budget drops, while the sparse floor
   (minBudget) serves it with room to drain the backlog. DYNASPARSE_E2E_BASE_RATE overrides it.
3. The SLO comes from what the control law compares with it: the p95 TTFT in status (the worst
   pod's 30 s window) at the base load, once that window holds only base-load requests.

On failure the assertion message carries the measurements and a status timeline.
"""

from __future__ import annotations

import threading
import time

from e2e_load import OpenLoopLoad, probe_capacity
from e2e_support import BASE_RATE_OVERRIDE, apply_model, model_status, needs, ready_worker_pods

from dynasparse.devcluster.fixture import wait_until

NAME = "step"
REPLICAS = 2
WORKER_WINDOW_S = 30.0  # the workers' latency window (worker/dynasparse_worker/control/window.py)
LAW_MIN_SAMPLES = 5  # the operator's ControlSettings.min_samples
PROBE_CLIENTS_PER_POD = 4
PROBE_SECONDS = 10.0
# 3x the base load = OVERLOAD x the dense capacity: a queue builds without bound, so the p95 crosses
# any SLO; the floor (~1.5x faster than dense on 2 CPU cores) serves it at ~80% utilization.
OVERLOAD = 1.2
# Two tokens per request: the SLO is on the time to the first token, and cheap requests give the
# workers' 30 s window enough samples (the control law ignores a pod with fewer than 5) even on a
# slow machine; the budget speeds prefill (a prompt chunk follows the plan of its length's batch
# bucket) and decode alike.
MAX_TOKENS = 2
# The SLO over the base load's p95 (~40% utilization): room for the floor's queueing at ~80%.
SLO_OVER_BASE_P95 = 2.5
MIN_SLO_MS = 50.0


class StatusLog:
    """Samples the AdaptiveModel's status every second, so a failure says what the loop saw."""

    def __init__(self, cluster, namespace: str):
        self.cluster, self.namespace = cluster, namespace
        self.started = time.monotonic()
        self.lines: list[str] = []
        self._last = ""
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def note(self, text: str) -> None:
        self.lines.append(f"{time.monotonic() - self.started:6.1f}s  -- {text}")

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                st = model_status(self.cluster, self.namespace, NAME)
            except Exception as exc:  # noqa: BLE001 - a missed sample is fine
                self.lines.append(f"status read failed: {exc!r}")
                continue
            pods = " ".join(f"[b={p.get('budget')} p95={p.get('ttftP95Ms')} q={p.get('queueDepth')}]"
                            for p in st.get("pods") or [])
            line = f"budget={st.get('budget')} floor={st.get('floor')} p95={st.get('p95TtftMs')} {pods}"
            if line != self._last:  # one line per change
                self.lines.append(f"{time.monotonic() - self.started:6.1f}s  {line}")
                self._last = line

    def stop(self) -> str:
        self._stop.set()
        return "\n".join(self.lines[-200:])


def test_a_3x_load_step_lowers_the_budget_and_relaxes_after(operator_running, namespace):
    needs("dynasparse_worker.commands.serve", "the worker's `dynasparse serve` command")
    cluster = operator_running
    # A lenient SLO while measuring: the budget stays at its ceiling (dense).
    spec = {"model": "default", "replicas": REPLICAS, "slo": {"ttftP95Ms": 600000},
            "quality": {"minBudget": 0.2}, "control": {"intervalSeconds": 1, "responsiveness": 0.8},
            # one core each: two workers with torch's default pool (every core) oversubscribe a
            # 2-core box and their latency swings many times over, whatever the budget
            "worker": {"cpu": "1"}}
    apply_model(cluster, namespace, NAME, spec)
    wait_until(lambda: len(ready_worker_pods(cluster, namespace, NAME)) == REPLICAS, 420,
               f"{REPLICAS} workers Ready", interval=2)
    log = StatusLog(cluster, namespace)
    loads: list[OpenLoopLoad] = []

    def start(rate: float) -> OpenLoopLoad:
        loads.append(OpenLoopLoad(cluster, namespace, NAME, rate=rate, max_tokens=MAX_TOKENS).start())
        log.note(f"open-loop load at {rate:.2f} req/s")
        return loads[-1]

    def status(key: str, default=None):
        return model_status(cluster, namespace, NAME).get(key, default)

    def waiting(check, timeout: float, what: str):
        try:
            return wait_until(check, timeout, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{log.stop()}") from None

    try:
        capacity = probe_capacity(cluster, namespace, NAME, clients_per_pod=PROBE_CLIENTS_PER_POD,
                                  seconds=PROBE_SECONDS, max_tokens=MAX_TOKENS)
        base_rate = BASE_RATE_OVERRIDE or OVERLOAD * capacity.requests_per_s / 3
        log.note(f"dense capacity {capacity}; base rate {base_rate:.2f} req/s")
        # Under the step each pod answers about its share of the capacity; the control law ignores a
        # pod's p95 over fewer than LAW_MIN_SAMPLES first tokens in its window (it can then only hold
        # or relax), and a p95 over a handful is its maximum: on a machine this busy the scenario
        # cannot show, so say so instead of timing out.
        per_window = capacity.requests_per_s / REPLICAS * WORKER_WINDOW_S
        assert per_window >= 2 * LAW_MIN_SAMPLES, (
            f"the workers answer {capacity.requests_per_s:.2f} req/s across {REPLICAS} pods (service "
            f"time {capacity.service_s:.1f} s): ~{per_window:.0f} first tokens per pod per "
            f"{WORKER_WINDOW_S:.0f} s window under the step, under the {2 * LAW_MIN_SAMPLES} the "
            f"control law needs to see its p95; the machine is too busy for this scenario")

        base = start(base_rate)
        time.sleep(WORKER_WINDOW_S + 5)  # the window forgets the probe: base-load requests only
        p95_base = waiting(lambda: status("p95TtftMs"), 30, "a p95 TTFT in status at the base load")
        slo_ms = max(MIN_SLO_MS, SLO_OVER_BASE_P95 * p95_base)
        spec["slo"]["ttftP95Ms"] = round(slo_ms)
        apply_model(cluster, namespace, NAME, spec)
        log.note(f"base p95 TTFT {p95_base:.0f} ms: SLO {slo_ms:.0f} ms")
        budget_base = waiting(lambda: status("budget"), 30, "a budget in status")

        step = start(2 * base_rate)  # on top of the base: 3x
        waiting(lambda: status("budget", 1.0) < budget_base, 90, "the budget to drop under the 3x load")
        log.note(f"budget dropped to {status('budget')}")
        # Back under the SLO *with* a lowered budget: the sparse budget, not a relaxed load, holds it.
        waiting(lambda: 0 < status("p95TtftMs", slo_ms + 1) <= slo_ms and status("budget", 1.0) < budget_base,
                WORKER_WINDOW_S + 90,
                f"the p95 TTFT to come back under the SLO ({slo_ms:.0f} ms) at 3x the base load, budget lowered")
        assert len(ready_worker_pods(cluster, namespace, NAME)) == REPLICAS, "no new pods"
        assert status("replicas") == REPLICAS, "no new pods"
        low = status("budget")
        log.note(f"p95 back under the SLO at budget {low}")

        step_result, base_result = step.stop(), base.stop()
        log.note(f"{step_result.ok + base_result.ok} answered, "
                 f"{step_result.busy_refusals + base_result.busy_refusals} refusals (429) re-sent")
        assert step_result.failed == 0 and base_result.failed == 0, \
            (step_result.errors + base_result.errors)[:5]
        start(base_rate / 3)
        waiting(lambda: status("budget", 0) > low, WORKER_WINDOW_S + 90, "the budget to relax when the load drops")
    finally:
        for load in loads:
            load.stop(drain_timeout=30)
        print(log.stop())
