"""Protobuf <-> control-law types: Report -> PodReport, PodCommand -> ControlMessage.

Pure; the operator's side of the shared contract (dynasparse_proto.contract builds the command
message and converts modes and curves for both ends). Called by law_loop.py (and by tests that
play a worker).

Reports are untrusted input (any worker, any bug): `report_from_pb` is the boundary where every
field is checked, so the control law only ever sees finite, in-range numbers. A latency that is not
a finite non-negative number is dropped (its axis counts as having no samples) and logged; budgets
and losses are clamped into their ranges; quality-curve points that are not finite or out of range
are dropped.
"""

from __future__ import annotations

import dataclasses
import logging
import math

from dynasparse_operator.law_types import LawParams, PodCommand, PodReport
from dynasparse_proto import control_pb2
from dynasparse_proto.contract import (Command, LoadSignals, command_to_pb as contract_command_to_pb,
                                       load_signals_from_pb, mode_from_pb, quality_curve_from_pb)

log = logging.getLogger(__name__)
MAX_SAMPLES = 2**31 - 1
MAX_LATENCY_MS = 24 * 3600 * 1000.0
"""A p95 beyond a day is a broken clock, not a measurement."""


def report_from_pb(report: control_pb2.Report, received_at: float, pod: str = "") -> PodReport:
    """The law's view of one Report; `received_at` is the operator's monotonic clock."""
    name = pod or report.pod_name
    ttft_ms, ttft_n = _latency(name, "ttft", report.ttft)
    itl_ms, itl_n = _latency(name, "inter_token", report.inter_token)
    return PodReport(
        name=name,
        received_at=received_at,
        ttft_p95_ms=ttft_ms,
        inter_token_p95_ms=itl_ms,
        samples=ttft_n,
        inter_token_samples=itl_n,
        queue_depth=int(report.queue_depth),
        running=int(report.running_sequences),
        applied_budget=_within(report.applied_budget, 0.0, 1.0, fallback=1.0),
        expected_loss=_within(report.expected_quality_loss, 0.0, 1e6, fallback=0.0),
        min_budget=_within(report.min_budget, 0.0, 1.0, fallback=0.0),
        quality_curve=quality_curve_from_pb(report.quality_curve),
        mode=mode_from_pb(report.mode),
        load=_load(report.load) if report.HasField("load") else None,
    )


MAX_RATE = 1e6
"""Requests/s beyond this are a broken counter, not a load."""


def _load(message: control_pb2.LoadSignals) -> LoadSignals:
    """The load signals with every number clamped into a range the feed-forward can trust."""
    load = load_signals_from_pb(message)
    return dataclasses.replace(
        load,
        arrival_rate_short=_within(load.arrival_rate_short, 0.0, MAX_RATE, fallback=0.0),
        arrival_rate_long=_within(load.arrival_rate_long, 0.0, MAX_RATE, fallback=0.0),
        oldest_waiting_s=_within(load.oldest_waiting_s, 0.0, MAX_LATENCY_MS / 1000, fallback=0.0),
        work_per_request_s=_within(load.work_per_request_s, 0.0, MAX_LATENCY_MS / 1000,
                                   fallback=0.0),
        slots=min(load.slots, MAX_SAMPLES),
        samples_since_change=min(load.samples_since_change, MAX_SAMPLES),
        late_since_change=min(load.late_since_change, load.samples_since_change, MAX_SAMPLES),
    )


def command_to_pb(command: PodCommand, params: LawParams, *, epoch: int, sequence: int,
                  sender: str, report_interval_s: float = 0.0, drain_grace_s: float = 0.0
                  ) -> control_pb2.ControlMessage:
    """One pod's ControlMessage with (epoch, sequence) and the TTFT SLO the worker counts its
    misses against."""
    return contract_command_to_pb(Command(
        epoch=epoch, sequence=sequence, target_budget=command.target_budget, floor=command.floor,
        ceiling=command.ceiling, mode=command.mode, reason=command.reason, sender=sender,
        report_interval_s=report_interval_s, drain_grace_s=drain_grace_s,
        ttft_p95_ms=params.ttft_slo_ms))


def _latency(pod: str, axis: str, summary: control_pb2.LatencySummary) -> tuple[float, int]:
    """(p95 ms, samples); a p95 that is not a finite, non-negative number of ms is dropped."""
    p95, count = summary.p95_ms, min(int(summary.count), MAX_SAMPLES)
    if math.isfinite(p95) and 0.0 <= p95 <= MAX_LATENCY_MS:
        return float(p95), count
    log.warning("pod %s reported %s p95 %r ms: dropped (not a latency)", pod, axis, p95)
    return 0.0, 0


def _within(value: float, low: float, high: float, *, fallback: float) -> float:
    """`value` clamped into [low, high]; `fallback` when it is NaN."""
    if math.isnan(value):
        return fallback
    return min(high, max(low, float(value)))
