"""The control contract as plain values: a worker's mode, the command the operator sends, the
load signals and curves a report carries, and their protobuf conversions.

Both ends build and read `dynasparse.v1` messages through these, so a field means the same thing
on either side. Conversions here are literal (proto3's zero stays zero, meaning "not given"):
judging an untrusted value is the receiver's job (the worker's bounds, the operator's wire).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from typing import Iterable

from dynasparse_proto.quality import valid_curve
from dynasparse_proto.speed import valid_speed_curve
from dynasparse_proto.v1 import control_pb2


class Mode(str, enum.Enum):
    """How a worker serves: within its bounds, or draining (one-way: a drained worker exits)."""

    NORMAL = "normal"
    DRAIN = "drain"

    def __str__(self) -> str:  # "drain", not "Mode.DRAIN", in labels, logs and messages
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


def mode_to_pb(mode: Mode) -> int:
    return control_pb2.MODE_DRAIN if mode is Mode.DRAIN else control_pb2.MODE_NORMAL


def mode_from_pb(value: int) -> Mode:
    """MODE_DRAIN is a drain; anything else (unspecified, an unknown future value) serves."""
    return Mode.DRAIN if value == control_pb2.MODE_DRAIN else Mode.NORMAL


@dataclass(frozen=True)
class Command:
    """One ControlMessage as plain data. Zero means "not given" for every number (proto3)."""

    epoch: int
    sequence: int
    target_budget: float = 0.0
    floor: float = 0.0
    ceiling: float = 0.0
    mode: Mode = Mode.NORMAL
    reason: str = ""
    sender: str = ""
    report_interval_s: float = 0.0
    drain_grace_s: float = 0.0
    ttft_p95_ms: float = 0.0  # the TTFT SLO the worker counts its misses against
    sent_at_unix_ms: int = 0


def command_to_pb(command: Command) -> control_pb2.ControlMessage:
    """The ControlMessage for `command`, stamped now when it carries no send time."""
    return control_pb2.ControlMessage(
        epoch=command.epoch, sequence=command.sequence, target_budget=command.target_budget,
        floor=command.floor, ceiling=command.ceiling, mode=mode_to_pb(command.mode),
        slo=control_pb2.SloTargets(ttft_p95_ms=command.ttft_p95_ms),
        reason=command.reason, sender=command.sender,
        report_interval_s=command.report_interval_s, drain_grace_s=command.drain_grace_s,
        sent_at_unix_ms=command.sent_at_unix_ms or int(time.time() * 1000),
    )


def command_from_pb(message: control_pb2.ControlMessage) -> Command:
    return Command(
        epoch=int(message.epoch), sequence=int(message.sequence),
        target_budget=message.target_budget, floor=message.floor, ceiling=message.ceiling,
        mode=mode_from_pb(message.mode), reason=message.reason, sender=message.sender,
        report_interval_s=message.report_interval_s, drain_grace_s=message.drain_grace_s,
        ttft_p95_ms=message.slo.ttft_p95_ms, sent_at_unix_ms=int(message.sent_at_unix_ms),
    )


@dataclass(frozen=True)
class LoadSignals:
    """A Report's LoadSignals as plain data: what a worker sees of its offered load."""

    arrival_rate_short: float = 0.0  # requests/s over the short window (dynasparse_proto.load)
    arrival_rate_long: float = 0.0  # requests/s over the long window
    oldest_waiting_s: float = 0.0
    work_per_request_s: float = 0.0  # dense decode slot-seconds per request; 0: not measured yet
    slots: int = 0  # decode slots; 0: unknown
    samples_since_change: int = 0  # first tokens since the budget last changed, plus late waiting
    late_since_change: int = 0  # of them past the TTFT SLO
    speed_curve: tuple[tuple[float, float], ...] = ()  # (budget, speed-up over dense)


def load_signals_to_pb(load: LoadSignals) -> control_pb2.LoadSignals:
    return control_pb2.LoadSignals(
        arrival_rate_short=load.arrival_rate_short, arrival_rate_long=load.arrival_rate_long,
        oldest_waiting_s=load.oldest_waiting_s, work_per_request_s=load.work_per_request_s,
        slots=load.slots, samples_since_change=load.samples_since_change,
        late_since_change=load.late_since_change, speed_curve=speed_curve_to_pb(load.speed_curve))


def load_signals_from_pb(load: control_pb2.LoadSignals) -> LoadSignals:
    """Literal but for the speed curve, whose invalid points are dropped."""
    return LoadSignals(
        arrival_rate_short=load.arrival_rate_short, arrival_rate_long=load.arrival_rate_long,
        oldest_waiting_s=load.oldest_waiting_s, work_per_request_s=load.work_per_request_s,
        slots=int(load.slots), samples_since_change=int(load.samples_since_change),
        late_since_change=int(load.late_since_change),
        speed_curve=speed_curve_from_pb(load.speed_curve))


def quality_curve_to_pb(curve: Iterable[tuple[float, float]]) -> list[control_pb2.QualityPoint]:
    return [control_pb2.QualityPoint(budget=b, expected_loss=loss) for b, loss in curve]


def quality_curve_from_pb(points: Iterable[control_pb2.QualityPoint]
                          ) -> tuple[tuple[float, float], ...]:
    """The reported (budget, expected loss) points that are valid, ascending budget."""
    return valid_curve((p.budget, p.expected_loss) for p in points)


def speed_curve_to_pb(curve: Iterable[tuple[float, float]]) -> list[control_pb2.SpeedPoint]:
    return [control_pb2.SpeedPoint(budget=b, speedup=s) for b, s in curve]


def speed_curve_from_pb(points: Iterable[control_pb2.SpeedPoint]) -> tuple[tuple[float, float], ...]:
    """The reported (budget, speed-up) points that are valid, ascending budget."""
    return valid_speed_curve((p.budget, p.speedup) for p in points)
