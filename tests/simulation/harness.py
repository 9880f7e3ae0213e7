"""A request-level simulation of worker pods closed by the production control pieces.

What is real: the daemon's per-model law (`law_loop.ModelLaw`: `control_law.decide` with the
daemon's timing, a decision every control interval and at once on a report that warrants it,
commands re-sent only when they change or every five intervals), the wire conversions both ways
(`wire.command_to_pb`, `contract.command_from_pb`, `service.report_from_snapshot` with the quality
curve once per stream, `wire.report_from_pb`), and each worker's `Supervisor` (bounds, fast loop,
30 s latency window) on an injected clock.

What is modelled: each pod is a continuous-batching server with `slots` decode slots. A request
waits for a slot, its prefill takes `prefill_s / speedup(budget)` and its decode needs an
exponentially distributed amount of dense work that progresses at `speedup(budget)` per second, so
a pod serves `dense_rps × speedup(budget)` requests/s at full batch. `speedup` interpolates a
measured budget -> throughput curve. Time is simulated in ticks of `dt`; nothing sleeps.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import random
from collections import deque
from typing import Callable

from dynasparse_operator import wire
from dynasparse_operator.law_loop import ModelLaw
from dynasparse_operator.law_types import Decision, LawParams, LawState, PodFacts
from dynasparse_proto.contract import command_from_pb
from dynasparse_worker.control.fast_loop import FastLoopConfig
from dynasparse_worker.control.memory import MemoryReading
from dynasparse_worker.control.service import report_from_snapshot
from dynasparse_worker.control.supervisor import Supervisor
from dynasparse_proto.speed import speedup_at
from dynasparse_worker.engine.types import EngineStats

H200_BATCH32 = ((0.3, 2.08), (0.5, 1.56), (0.75, 1.18), (1.0, 1.0))
"""Measured decode throughput relative to dense, by budget (H200, batch 32)."""
QUALITY_CURVE = ((0.2, 0.05), (0.3, 0.03), (0.5, 0.015), (0.75, 0.005), (1.0, 0.0))
SPOT = ("aws-node-termination-handler/spot-itn",)


def speedup(budget: float) -> float:
    """Throughput relative to dense at `budget` on the modelled device."""
    return speedup_at(H200_BATCH32, budget)


class _Actuator:
    """The model side of a worker: remembers the budget, reports the quality curve."""

    def __init__(self, calibration_min: float = 0.2):
        self.budget = 1.0
        self._min = calibration_min

    def set_budget(self, budget: float) -> float:
        self.budget = budget
        return next((loss for b, loss in QUALITY_CURVE if b >= budget - 1e-9), 0.0)

    def min_budget(self) -> float:
        return self._min

    def quality_curve(self) -> list[tuple[float, float]]:
        return list(QUALITY_CURVE)

    def speed_curve(self) -> list[tuple[float, float]]:
        return list(H200_BATCH32)


class _NoMemoryPressure:
    def read(self) -> MemoryReading:
        return MemoryReading(0, 0, "simulated")


@dataclasses.dataclass
class Request:
    arrival: float
    start: float = -1.0
    ttft: float = -1.0


class Pod:
    """One worker: a Supervisor plus a continuous-batching queue."""

    def __init__(self, sim: "Simulation", name: str, *, dense_rps: float, prefill_s: float,
                 slots: int, quality_min_budget: float | None):
        self.sim, self.name = sim, name
        self.dense_rps, self.prefill_s, self.slots = dense_rps, prefill_s, slots
        self.actuator = _Actuator()
        self.sup = Supervisor(self.actuator, pod_name=name, model_name="sim",
                              config=FastLoopConfig(), memory=_NoMemoryPressure(),
                              quality_min_budget=quality_min_budget, slots=slots,
                              clock=lambda: sim.now)
        self.sup.model_loaded = True
        self.waiting: deque[Request] = deque()
        self.running: list[tuple[float, int]] = []  # heap of (finish work-clock, id)
        self.work_clock = 0.0  # dense seconds of decode done per running request
        self.disruption: tuple[str, ...] = ()
        self.gone = False
        self.drain_started: float | None = None
        self.next_report = sim.rng.uniform(0, sim.report_interval_s)

    def service_work(self) -> float:
        """Dense seconds of decode one request needs (mean slots / dense_rps)."""
        mean = self.slots / self.dense_rps
        return self.sim.rng.expovariate(1.0 / mean) * self.sim.noise_factor()

    def tick(self, dt: float) -> None:
        sim = self.sim
        speed = speedup(self.actuator.budget)
        while self.waiting and len(self.running) < self.slots:
            req = self.waiting.popleft()
            req.start = sim.now
            req.ttft = sim.now - req.arrival + self.prefill_s / speed * sim.noise_factor()
            self.sup.record_first_token(req.ttft)
            sim.finished.append(req)
            heapq.heappush(self.running, (self.work_clock + self.service_work(), id(req)))
        self.work_clock += dt * speed
        while self.running and self.running[0][0] <= self.work_clock:
            heapq.heappop(self.running)
            self.sup.count_request(True)
        self.sup.on_step(EngineStats(queue_depth=len(self.waiting), running=len(self.running),
                                     kv_usage=0.5 * len(self.running) / self.slots))
        if self.sup.draining and self.drain_started is None:
            self.drain_started = sim.now
        if self.drain_started is not None and not self.waiting and not self.running:
            self.gone = True  # drained: the pod exits and stays down

    def oldest_wait(self) -> float:
        return self.sim.now - self.waiting[0].arrival if self.waiting else 0.0


@dataclasses.dataclass
class Scenario:
    """One trace: the load (requests/s at time t), its length, and what happens when."""

    name: str
    load: Callable[[float], float]
    duration_s: float
    pods: int = 3
    prefill_s: float = 0.12
    slow_prefill_s: float | None = None  # every pod's prefill when the pods are slow
    noise_sigma: float = 0.0  # lognormal sigma on service and prefill times
    preempt_at: float | None = None  # a third of the pods get a spot notice here
    restart_at: float | None = None  # the operator restarts here (down `restart_gap_s`)
    restart_gap_s: float = 5.0
    overload_from: float = 5.0  # onset of overload is looked for after this time


@dataclasses.dataclass
class Outcome:
    scenario: str
    seed: int
    requests: int
    miss_fraction: float
    windows_over: float  # fraction of 30 s windows whose p95 TTFT exceeds the SLO
    reversals_per_5min: float
    onset_to_applied_s: float | None  # None: no overload onset in this run
    late_to_next_cut_s: float | None
    idle_relaxes_with_requests: int  # relaxes on "too few samples" while requests ran or waited
    relaxes_past_slo: int  # relaxes while a waiting request was already older than the SLO
    min_applied_budget: float
    mean_applied_budget: float  # time average of the serving pods' lowest budget (quality kept)
    budget_changes: int


class Simulation:
    def __init__(self, scenario: Scenario, params: LawParams, seed: int, *, dt: float = 0.05,
                 dense_rps: float = 7.8, slots: int = 32, report_interval_s: float = 0.5,
                 network_delay_s: float = 0.02):
        self.sc, self.params, self.dt = scenario, params, dt
        self.rng = random.Random(seed)
        self.seed = seed
        self.now = 0.0
        self.report_interval_s = report_interval_s
        self.network_delay_s = network_delay_s
        self.finished: list[Request] = []
        prefill = scenario.slow_prefill_s or scenario.prefill_s
        self.pods = [Pod(self, f"w{i}", dense_rps=dense_rps, prefill_s=prefill, slots=slots,
                         quality_min_budget=params.min_budget) for i in range(scenario.pods)]
        self._restart_operator(epoch=1, state=LawState())
        self.decisions: list[Decision] = []
        self.in_flight: list[tuple[float, str, object]] = []  # (arrive at, pod, message)
        self.idle_relaxes_with_requests = 0
        self.relaxes_past_slo = 0
        self.min_applied = 1.0
        self.applied_log: list[tuple[float, float]] = []  # (time, lowest budget a serving pod
        # applies: a draining pod sits at the floor and serves nothing new)

    def noise_factor(self) -> float:
        sigma = self.sc.noise_sigma
        return math.exp(self.rng.gauss(-sigma * sigma / 2, sigma)) if sigma else 1.0

    # --- the operator, as the daemon drives the law -----------------------------------------------
    def _restart_operator(self, epoch: int, state: LawState) -> None:
        self.epoch, self.sequence = epoch, 0
        self.law = ModelLaw(state)  # a new operator: new streams, nothing remembered
        self.next_decide = self.now
        self.operator_up = True

    def _decide(self) -> None:
        live = [p for p in self.pods if not p.gone]
        facts = [PodFacts(p.name, f"n{p.name}", (), p.disruption) for p in live]
        busy = sum(len(p.running) + len(p.waiting) for p in live if not p.disruption)
        past_slo = any(p.oldest_wait() * 1000 > self.params.ttft_slo_ms for p in live)
        decision = self.law.decide(facts, self.params, self.now)
        if decision.changed and decision.to_budget > decision.from_budget:
            self.idle_relaxes_with_requests += int("idle" in decision.reason and busy > 0)
            self.relaxes_past_slo += int(past_slo)
        self.decisions.append(decision)
        for cmd in self.law.due(decision.commands.values(), self.params, self.now):
            self.sequence += 1
            msg = wire.command_to_pb(cmd, self.params, epoch=self.epoch, sequence=self.sequence,
                                     sender="sim-operator", report_interval_s=self.report_interval_s,
                                     drain_grace_s=30.0)
            self.in_flight.append((self.now + self.network_delay_s, cmd.name, msg))
            self.law.sent(cmd, self.now)
        self.next_decide = self.now + self.params.interval_s

    # --- one tick ---------------------------------------------------------------------------------
    def step(self) -> None:
        sc = self.sc
        if sc.preempt_at is not None and self.now >= sc.preempt_at:
            doomed = self.pods[: max(1, len(self.pods) // 3)]
            for p in doomed:
                p.disruption = p.disruption or SPOT
        if sc.restart_at is not None and sc.restart_at <= self.now < sc.restart_at + sc.restart_gap_s:
            self.operator_up = False
        elif not self.operator_up:  # back: state from status (the budget), a newer epoch
            self._restart_operator(self.epoch + 1, LawState(budget=self.law.state.budget,
                                                            last_change_at=self.now))
        self._deliver()
        self._arrivals()
        for pod in self.pods:
            if not pod.gone:
                pod.tick(self.dt)
        applied = [p.actuator.budget for p in self.pods if not p.gone]
        self.min_applied = min([self.min_applied, *applied])
        serving = [p.actuator.budget for p in self.pods if not p.gone and not p.sup.draining]
        self.applied_log.append((self.now, min(serving or applied)))
        wake = self._reports()
        if self.operator_up and (wake or self.now >= self.next_decide - 1e-9):
            self._decide()
        self.now = round(self.now + self.dt, 9)

    def _deliver(self) -> None:
        due = [m for m in self.in_flight if m[0] <= self.now + 1e-9]
        self.in_flight = [m for m in self.in_flight if m[0] > self.now + 1e-9]
        if not self.operator_up:
            return  # the streams went down with the operator
        for _, name, msg in due:
            pod = next((p for p in self.pods if p.name == name and not p.gone), None)
            if pod is not None:
                pod.sup.apply_update(command_from_pb(msg))

    def _arrivals(self) -> None:
        count = _poisson(self.rng, self.sc.load(self.now) * self.dt)
        ready = [p for p in self.pods if not p.gone and p.sup.admitting and not p.disruption]
        ready = ready or [p for p in self.pods if not p.gone]
        for _ in range(count):
            self.rng.choice(ready).waiting.append(Request(self.now))

    def _reports(self) -> bool:
        wake = False
        for pod in self.pods:
            if pod.gone or self.now < pod.next_report:
                continue
            pod.next_report += self.report_interval_s
            if not self.operator_up:
                continue
            stream_new = pod.name not in self.law.reports  # the curve rides once per stream
            report = report_from_snapshot(pod.sup.snapshot(), with_quality_curve=stream_new)
            wake |= self.law.on_report(pod.name, report, self.now, self.params)
        live = {p.name for p in self.pods if not p.gone}
        self.law.forget(live, live)
        return wake

    # --- the run and its figures ------------------------------------------------------------------
    def run(self) -> Outcome:
        while self.now < self.sc.duration_s - 1e-9:
            self.step()
        return self.outcome()

    def outcome(self) -> Outcome:
        slo_s = self.params.ttft_slo_ms / 1000.0
        reqs = self.finished
        misses = sum(1 for r in reqs if r.ttft > slo_s)
        return Outcome(
            scenario=self.sc.name, seed=self.seed, requests=len(reqs),
            miss_fraction=misses / len(reqs) if reqs else 0.0,
            windows_over=windows_over(reqs, slo_s, self.sc.duration_s),
            reversals_per_5min=reversals(self.budget_series(), 0.15) * 300.0 / self.sc.duration_s,
            onset_to_applied_s=self.onset_to_applied(slo_s),
            late_to_next_cut_s=self.late_to_next_cut(slo_s),
            idle_relaxes_with_requests=self.idle_relaxes_with_requests,
            relaxes_past_slo=self.relaxes_past_slo,
            min_applied_budget=self.min_applied,
            mean_applied_budget=sum(b for _, b in self.applied_log) / max(1, len(self.applied_log)),
            budget_changes=sum(1 for d in self.decisions if d.changed),
        )

    def budget_series(self) -> list[float]:
        return [1.0] + [d.to_budget for d in self.decisions if d.changed]

    def _first_late(self, slo_s: float) -> float | None:
        """When the first request arriving after `overload_from` went past the SLO."""
        return next((r.arrival + slo_s for r in sorted(self.finished, key=lambda r: r.arrival)
                     if r.arrival >= self.sc.overload_from and r.ttft > slo_s), None)

    def onset_to_applied(self, slo_s: float) -> float | None:
        """From the first request late after `overload_from` to the first lower budget a serving
        pod applies after `overload_from`: 0 when that cut came before any request was late (the
        budget moved ahead of the SLO), None when no request was late."""
        onset = self._first_late(slo_s)
        if onset is None:
            return None
        start = next((b for t, b in reversed(self.applied_log) if t <= self.sc.overload_from), 1.0)
        cut = next((t for t, b in self.applied_log
                    if t >= self.sc.overload_from and b < start - 1e-9), None)
        if cut is None:
            return math.inf if start > min(b for _, b in self.applied_log) + 1e-9 else 0.0
        return max(0.0, cut - onset)

    def late_to_next_cut(self, slo_s: float) -> float | None:
        """From the first request late after `overload_from` to the next lower budget a serving
        pod applies at or after that moment (stricter: a cut made before it does not count)."""
        onset = self._first_late(slo_s)
        if onset is None:
            return None
        before = next((b for t, b in reversed(self.applied_log) if t <= onset), 1.0)
        after = next((t for t, b in self.applied_log if t >= onset and b < before - 1e-9), None)
        if after is None:
            return math.inf if before > min(b for _, b in self.applied_log) + 1e-9 else 0.0
        return after - onset


def windows_over(reqs: list[Request], slo_s: float, duration_s: float, width: float = 30.0
                 ) -> float:
    """Fraction of `width`-second windows (by arrival) whose p95 TTFT exceeds the SLO."""
    buckets: dict[int, list[float]] = {}
    for r in reqs:
        buckets.setdefault(int(r.arrival // width), []).append(r.ttft)
    n = max(1, int(duration_s // width))
    over = 0
    for k in range(n):
        values = sorted(buckets.get(k, []))
        if values and values[min(len(values) - 1, math.ceil(0.95 * len(values)) - 1)] > slo_s:
            over += 1
    return over / n


def reversals(series: list[float], threshold: float) -> int:
    """Direction changes of at least `threshold`: a zig-zag filter, so a move against the current
    direction counts once it has gone `threshold` from that direction's extreme."""
    if not series:
        return 0
    count, direction, high, low = 0, 0, series[0], series[0]
    for value in series[1:]:
        high, low = max(high, value), min(low, value)
        if direction != -1 and high - value >= threshold:
            count += direction == 1
            direction, low = -1, value
        elif direction != 1 and value - low >= threshold:
            count += direction == -1
            direction, high = 1, value
    return count


def _poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method: the means here are small (arrivals per tick)."""
    limit, k, p = math.exp(-mean), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k
