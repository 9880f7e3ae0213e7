"""The demo's local controller: the operator's control law, over the real mTLS gRPC stream.

It does what the operator's per-model daemon does for one pod, without Kubernetes: keep a Session
open to the worker (dynasparse_operator.grpc_client) and drive the daemon's own per-model law
(dynasparse_operator.law_loop.ModelLaw): every report goes through it, it decides every interval
and at once when a report warrants it, and its rule says which commands to (re)send. With `fixed_budget` it pins the
budget instead (floor = ceiling = target), which is the demo's baseline. Called by demo/run.py.

A run starts clean: the worker's p95 is over a sliding 30 s window, which after the capacity probe
(or the previous run) still holds latencies of load that is gone. Until `start_run`, the controller
holds the budget at 1.0 and does not run the law; `wait_until_window_clean` waits for a report whose
windows are empty, so every sample the law sees afterwards was measured during this run.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field

from dynasparse_operator import wire
from dynasparse_operator.grpc_client import ClientTls, StreamPool
from dynasparse_operator.law_loop import ModelLaw
from dynasparse_operator.law_types import Decision, LawParams, LawState, PodCommand, PodFacts, PodReport
from dynasparse_operator.settings import GrpcSettings
from dynasparse_proto import control_pb2
from dynasparse_proto.contract import Mode

POD = "demo-worker"


@dataclass
class ControllerView:
    """What the live view and the timeline read; updated as reports and decisions arrive."""

    report: control_pb2.Report | None = None
    law_report: PodReport | None = None
    last_decision: Decision | None = None
    reason: str = "waiting for the first report"
    decisions: list[Decision] = field(default_factory=list)


class LocalController:
    """Runs the operator's control law against one local worker."""

    def __init__(self, ip: str, control_port: int, tls: ClientTls, params: LawParams,
                 fixed_budget: float | None = None) -> None:
        self._ip = ip
        self._params = params
        self._fixed_budget = fixed_budget
        self._pool = StreamPool(tls, "localhost", control_port, self._on_report, GrpcSettings())
        self._wake = asyncio.Event()
        self._law = ModelLaw(LawState(budget=fixed_budget if fixed_budget is not None else 1.0))
        self._epoch = int(time.time() * 1000)
        self._sequence = itertools.count(1)
        self._run_started = False  # the law runs only on reports measured during the run
        self.view = ControllerView()

    async def wait_until_applied(self, timeout_s: float = 15.0) -> bool:
        """True once the worker acks this controller's first update (its budget is ours)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            report = self.view.report
            if report is not None and report.applied_epoch == self._epoch and report.applied_sequence >= 1:
                return True
            await asyncio.sleep(0.05)
        return False

    async def wait_until_window_clean(self, timeout_s: float, on_wait=None) -> bool:
        """True once a report sent under this controller's epoch holds no TTFT or inter-token
        sample: the worker's window has forgotten earlier load. `on_wait(samples_left)` is called
        while waiting. No request is in flight then, so nothing older can enter the window later."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            report = self.view.report
            if report is not None and report.applied_epoch == self._epoch:
                left = int(report.ttft.count) + int(report.inter_token.count)
                if left == 0:
                    return True
                if on_wait:
                    on_wait(int(report.ttft.count))
            await asyncio.sleep(0.1)
        return False

    def start_run(self) -> None:
        """From now on the law decides on the worker's reports (call once the window is clean)."""
        self._run_started = True
        self._wake.set()

    def _on_report(self, pod: str, report: control_pb2.Report, at: float) -> None:
        self.view.report = report
        wake = self._law.on_report(pod, report, time.monotonic(), self._params)
        self.view.law_report = self._law.reports[pod]
        if wake and self._fixed_budget is None and self._run_started:
            self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Decide every interval (and on violations) until `stop` is set."""
        await self._pool.sync({POD: self._ip})
        try:
            while not stop.is_set():
                try:
                    await asyncio.wait_for(self._wake.wait(), self._params.interval_s)
                except asyncio.TimeoutError:
                    pass
                self._wake.clear()
                self._step()
        finally:
            await self._pool.close()

    def _step(self) -> None:
        if self._fixed_budget is not None:
            budget = self._fixed_budget
            command = PodCommand(POD, budget, budget, budget, Mode.NORMAL, f"fixed budget {budget:.2f}")
            self.view.reason = command.reason
            self._send(command)
            return
        if not self._run_started:
            # Dense until the run's own latencies arrive; floor = ceiling, so the worker's fast loop
            # does not move it either.
            command = PodCommand(POD, 1.0, 1.0, 1.0, Mode.NORMAL,
                                 "budget 1.00 until the run starts (latency window not yet clean)")
            self.view.reason = command.reason
            self._send(command)
            return
        decision = self._law.decide([PodFacts(POD)], self._params, time.monotonic())
        self.view.last_decision = decision
        self.view.reason = decision.reason
        if decision.changed:
            self.view.decisions.append(decision)
        command = decision.commands.get(POD)
        if command is not None:
            self._send(command)

    def _send(self, command: PodCommand) -> None:
        """Sends when the law's resend rule says so (changed, or due for a refresh)."""
        now = time.monotonic()
        for due in self._law.due([command], self._params, now):
            if self._pool.send(POD, wire.command_to_pb(due, self._params, epoch=self._epoch,
                                                       sequence=next(self._sequence),
                                                       sender="dynasparse-demo")):
                self._law.sent(due, now)
