"""One model's control law between its worker streams: reports in, the law's decision, commands out.

The operator's per-model daemon (daemon.py) and the local demo (dynasparse/demo/controller.py) both
drive the law through a `ModelLaw`, so they judge reports, wake and resend by the same rules; only
where the pods, the streams and the status live differs. Pure apart from the clock the caller
passes.
"""

from __future__ import annotations

import dataclasses
from typing import Container, Iterable

from dynasparse_operator import control_law, wire
from dynasparse_operator.law_types import Decision, LawParams, LawState, PodCommand, PodFacts, PodReport
from dynasparse_proto import control_pb2

REFRESH_INTERVALS = 5
"""An unchanged command is sent again after this many control intervals, so a worker that missed
one (or restarted its stream) converges without waiting for a change."""


def command_key(command: PodCommand) -> tuple:
    """What makes two commands the same for resending: budgets to 1e-4 and the mode."""
    return (round(command.target_budget, 4), round(command.floor, 4), round(command.ceiling, 4),
            command.mode)


class ModelLaw:
    """The law's memory for one model: the latest report and quality curve per pod, the state,
    the last decision and what each pod was last sent."""

    def __init__(self, state: LawState) -> None:
        self.state = state
        self.reports: dict[str, PodReport] = {}
        self.curves: dict[str, tuple[tuple[float, float], ...]] = {}
        self.last_sent: dict[str, tuple[tuple, float]] = {}
        self.decision: Decision | None = None

    def on_report(self, pod: str, report: control_pb2.Report, at: float, params: LawParams) -> bool:
        """Take one Report; True when it warrants deciding now (a new pod, an SLO violation or a
        leading signal) rather than at the next tick. A worker sends its quality curve once per
        stream: a report without one keeps the curve this pod sent last."""
        received = wire.report_from_pb(report, at, pod)
        if received.quality_curve:
            self.curves[pod] = received.quality_curve
        elif pod in self.curves:
            received = dataclasses.replace(received, quality_curve=self.curves[pod])
        first = pod not in self.reports
        self.reports[pod] = received
        return first or control_law.needs_decision(received, params)

    def forget(self, pods: Container[str], streams: Container[str]) -> None:
        """Drop the reports of pods that are gone, and the send record of pods without a stream
        (a stream opened later gets its command at once)."""
        for name in [n for n in self.reports if n not in pods]:
            del self.reports[name]
            self.curves.pop(name, None)
        for name in [n for n in self.last_sent if n not in streams]:
            del self.last_sent[name]

    def decide(self, facts: Iterable[PodFacts], params: LawParams, now: float) -> Decision:
        """Run the law on the latest reports and remember its state and decision."""
        decision = control_law.decide(self.reports, list(facts), params, self.state, now)
        self.state = decision.state
        self.decision = decision
        return decision

    def due(self, commands: Iterable[PodCommand], params: LawParams, now: float) -> list[PodCommand]:
        """The commands to send now: changed ones, and unchanged ones due for a refresh."""
        due = []
        for command in commands:
            last = self.last_sent.get(command.name)
            if last and last[0] == command_key(command) and \
                    now - last[1] < REFRESH_INTERVALS * params.interval_s:
                continue
            due.append(command)
        return due

    def sent(self, command: PodCommand, now: float) -> None:
        self.last_sent[command.name] = (command_key(command), now)
