"""A latency model of worker pods under load, closed by the real control law.

Used by test_control_law_simulation.py. Each pod is a fluid queue whose service rate rises as the
budget falls (decode work ∝ a fixed part + budget), with M/M/1-style queueing delay on top; reports
carry the p95 of TTFT over a sliding window, every `report_interval_s`, as real workers do.
The driver mimics the operator's daemon: `decide` every control interval, and at once on a report
that `violates_slo`; commands reach the pod `network_delay_s` later.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections import deque
from typing import Callable

from dynasparse_operator.control_law import decide, violates_slo
from dynasparse_operator.law_types import (MODE_DRAIN, Decision, LawParams, LawState, PodFacts,
                                           PodReport)


@dataclasses.dataclass
class PodModel:
    """One worker: queue, budget, and the window of instantaneous p95 TTFT samples."""

    name: str
    node: str
    dense_rate: float = 10.0  # requests/s the pod serves at budget 1
    fixed_fraction: float = 0.2  # part of a request's cost that sparsity does not remove
    prefill_ms: float = 100.0
    budget: float = 1.0
    mode: str = "normal"
    backlog: float = 0.0  # queued requests beyond the steady-state queue
    window: deque = dataclasses.field(default_factory=lambda: deque(maxlen=20))
    reporting: bool = True
    pressure: tuple[str, ...] = ()
    disruption: tuple[str, ...] = ()

    def service_rate(self) -> float:
        return self.dense_rate / (self.fixed_fraction + (1 - self.fixed_fraction) * self.budget)

    def ttft_ms(self, arrival_rate: float) -> float:
        """p95 time to first token right now: base cost + queueing delay + backlog."""
        mu = self.service_rate()
        rho = arrival_rate / mu
        if rho < 0.98:
            queueing = max(0.0, math.log(20 * rho)) / (mu - arrival_rate) if rho > 0.05 else 0.0
        else:
            queueing = math.log(20) / (0.02 * mu)
        base = self.prefill_ms * (self.fixed_fraction + (1 - self.fixed_fraction) * self.budget)
        return base + 1000 * (queueing + self.backlog / mu)

    def advance(self, arrival_rate: float, dt: float) -> None:
        self.backlog = max(0.0, self.backlog + (arrival_rate - self.service_rate()) * dt)


@dataclasses.dataclass
class Trace:
    """What happened, sampled every tick."""

    t: list[float] = dataclasses.field(default_factory=list)
    budget: list[float] = dataclasses.field(default_factory=list)  # law's common budget
    worst_true_ms: list[float] = dataclasses.field(default_factory=list)  # survivors, instantaneous
    reported_p95_ms: list[tuple[float, float]] = dataclasses.field(default_factory=list)
    decisions: list[Decision] = dataclasses.field(default_factory=list)
    applied: dict[str, list[tuple[float, float]]] = dataclasses.field(default_factory=dict)

    def budget_changes(self) -> list[tuple[float, float, float]]:
        """(time, from, to) of every change of the common budget."""
        return [(d.at, d.from_budget, d.to_budget) for d in self.decisions if d.changed]

    def sign_changes(self, after: float = 0.0) -> int:
        steps = [to - fr for at, fr, to in self.budget_changes() if at >= after]
        return sum(1 for a, b in zip(steps, steps[1:]) if (a > 0) != (b > 0))

    def first_report_under(self, slo_ms: float, after: float) -> float | None:
        """Time of the first report after `after` whose worst p95 is under the SLO, having been over."""
        seen_over = False
        for t, p95 in self.reported_p95_ms:
            if t < after:
                continue
            if p95 > slo_ms:
                seen_over = True
            elif seen_over:
                return t
        return after if not seen_over else None


@dataclasses.dataclass
class Simulation:
    params: LawParams
    pods: list[PodModel]
    load: Callable[[float], float]  # total requests/s at time t
    dt: float = 0.05
    report_interval_s: float = 0.5
    network_delay_s: float = 0.05
    noise: float = 0.0  # lognormal sigma on each latency sample
    seed: int = 0
    react_to_violations: bool = True
    state: LawState = dataclasses.field(default_factory=LawState)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.reports: dict[str, PodReport] = {}
        self.pending: list[tuple[float, str, float, str]] = []  # (apply_at, pod, budget, mode)
        self.trace = Trace()
        self.now = 0.0
        self._ticks = 0
        self._next_tick = 0.0
        self._next_report = 0.0

    def serving(self) -> list[PodModel]:
        return [p for p in self.pods if p.mode != MODE_DRAIN]

    def run(self, until: float, events: Callable[["Simulation", float], None] | None = None) -> Trace:
        while self.now < until - 1e-9:
            if events:
                events(self, self.now)
            self._apply_pending()
            self._step_queues()
            if self.now + 1e-9 >= self._next_report:
                self._next_report += self.report_interval_s
                if self._report() and self.react_to_violations:
                    self._control()
            if self.now + 1e-9 >= self._next_tick:
                self._next_tick += self.params.interval_s
                self._control()
            self.trace.t.append(self.now)
            self.trace.budget.append(self.state.budget)
            self._ticks += 1
            self.now = round(self._ticks * self.dt, 9)
        return self.trace

    def _apply_pending(self) -> None:
        due = [c for c in self.pending if c[0] <= self.now + 1e-9]
        self.pending = [c for c in self.pending if c[0] > self.now + 1e-9]
        for _, name, budget, mode in due:
            pod = next(p for p in self.pods if p.name == name)
            pod.budget, pod.mode = budget, mode
            self.trace.applied.setdefault(name, []).append((self.now, budget))

    def _step_queues(self) -> None:
        serving = self.serving()
        rate = self.load(self.now) / max(1, len(serving))
        worst = 0.0
        for pod in serving:
            pod.advance(rate, self.dt)
            sample = pod.ttft_ms(rate) * (math.exp(self.rng.gauss(0, self.noise)) if self.noise else 1)
            pod.window.append(sample)
            worst = max(worst, sample)
        self.trace.worst_true_ms.append(worst)

    def _report(self) -> bool:
        """Each reporting pod sends its window's p95; True if any report violates the SLO."""
        violated, worst = False, 0.0
        for pod in self.serving():
            if not pod.reporting or not pod.window:
                continue
            ordered = sorted(pod.window)
            p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
            report = PodReport(name=pod.name, received_at=self.now, ttft_p95_ms=p95,
                               samples=len(ordered) * 5, applied_budget=pod.budget)
            self.reports[pod.name] = report
            violated |= violates_slo(report, self.params)
            worst = max(worst, p95)
        self.trace.reported_p95_ms.append((self.now, worst))
        return violated

    def _control(self) -> None:
        facts = [PodFacts(p.name, p.node, p.pressure, p.disruption) for p in self.pods
                 if p.mode != MODE_DRAIN or p.disruption]
        decision = decide(self.reports, facts, self.params, self.state, self.now)
        self.state = decision.state
        self.trace.decisions.append(decision)
        for cmd in decision.commands.values():
            self.pending.append((self.now + self.network_delay_s, cmd.name, cmd.target_budget,
                                 cmd.mode))
