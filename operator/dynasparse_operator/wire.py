"""Protobuf <-> control-law types: Report -> PodReport, PodCommand -> ControlMessage.

Pure; the only place the operator reads or builds `dynasparse.v1` messages field by field.
Called by daemon.py (and by tests that play a worker).
"""

from __future__ import annotations

import time

from dynasparse_operator.law_types import MODE_DRAIN, LawParams, PodCommand, PodReport
from dynasparse_proto import control_pb2


def report_from_pb(report: control_pb2.Report, received_at: float, pod: str = "") -> PodReport:
    """The law's view of one Report; `received_at` is the operator's monotonic clock."""
    return PodReport(
        name=pod or report.pod_name,
        received_at=received_at,
        ttft_p95_ms=report.ttft.p95_ms,
        inter_token_p95_ms=report.inter_token.p95_ms,
        samples=int(report.ttft.count),
        inter_token_samples=int(report.inter_token.count),
        queue_depth=int(report.queue_depth),
        applied_budget=report.applied_budget,
        expected_loss=report.expected_quality_loss,
        min_budget=report.min_budget,
        quality_curve=tuple((p.budget, p.expected_loss) for p in report.quality_curve),
        mode=MODE_DRAIN if report.mode == control_pb2.MODE_DRAIN else "normal",
    )


def command_to_pb(command: PodCommand, params: LawParams, *, epoch: int, sequence: int,
                  sender: str, report_interval_s: float = 0.0, drain_grace_s: float = 0.0
                  ) -> control_pb2.ControlMessage:
    """One pod's ControlMessage with (epoch, sequence) and the SLO targets."""
    return control_pb2.ControlMessage(
        epoch=epoch,
        sequence=sequence,
        target_budget=command.target_budget,
        floor=command.floor,
        ceiling=command.ceiling,
        mode=control_pb2.MODE_DRAIN if command.mode == MODE_DRAIN else control_pb2.MODE_NORMAL,
        slo=control_pb2.SloTargets(ttft_p95_ms=params.ttft_slo_ms,
                                   inter_token_p95_ms=params.inter_token_slo_ms),
        reason=command.reason,
        sender=sender,
        report_interval_s=report_interval_s,
        drain_grace_s=drain_grace_s,
        sent_at_unix_ms=int(time.time() * 1000),
    )
