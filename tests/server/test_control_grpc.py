"""The gRPC control endpoint over a real mTLS channel: refusal without a client certificate,
budget updates with (epoch, sequence) acks, stale updates ignored, reports, health."""

from __future__ import annotations

import itertools
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dynasparse_proto import control_pb2, control_pb2_grpc
from dynasparse_worker.control.pki import make_dev_bundle

pytestmark = pytest.mark.slow
_epochs = itertools.count(int(time.time()))  # the session worker keeps state across tests


def test_get_status_over_mtls_reports_the_worker(worker):
    report = worker.stub().GetStatus(control_pb2.StatusRequest(), timeout=10)
    assert report.pod_name == "test-worker" and report.model == "SmolLM2-135M-Instruct"
    assert report.ready and report.mode == control_pb2.MODE_NORMAL
    assert report.memory_source == "nvml" or report.memory_source.startswith("fallback:")
    assert report.gpu_memory_total_bytes > 0 and report.min_budget == pytest.approx(0.3)


def test_a_client_without_a_certificate_is_refused(worker):
    stub = control_pb2_grpc.ControlStub(worker.channel(with_client_cert=False))
    with pytest.raises(grpc.RpcError) as err:
        stub.GetStatus(control_pb2.StatusRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_client_certificate_from_another_ca_is_refused(worker):
    other = make_dev_bundle()
    creds = grpc.ssl_channel_credentials((worker.tls_dir / "ca.crt").read_bytes(),
                                         other["client.key"], other["client.crt"])
    channel = grpc.secure_channel(worker.control_target, creds,
                                  options=[("grpc.ssl_target_name_override", "localhost")])
    with pytest.raises(grpc.RpcError) as err:
        control_pb2_grpc.ControlStub(channel).GetStatus(control_pb2.StatusRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_budget_update_is_applied_acked_and_stale_ones_are_ignored(worker, Session):
    epoch = next(_epochs)
    session = Session(worker.stub())
    try:
        session.send(epoch=epoch, sequence=1, target_budget=0.7, floor=0.5, ceiling=0.9,
                     mode=control_pb2.MODE_NORMAL, reason="p95 TTFT 812 ms > SLO 500 ms",
                     sender="op-0", report_interval_s=0.1)
        acked = session.next_report(lambda r: r.applied_epoch == epoch)
        assert acked.applied_sequence == 1 and acked.applied_budget == pytest.approx(0.7)
        assert (acked.floor, acked.ceiling) == (pytest.approx(0.5), pytest.approx(0.9))
        assert acked.last_decision.source == "operator"
        assert "812 ms" in acked.last_decision.reason
        assert worker.runtime.actuator.budget == pytest.approx(0.7)  # reached the model side

        session.send(epoch=epoch, sequence=1, target_budget=0.55)  # a resend: ignored
        session.send(epoch=epoch - 1, sequence=99, target_budget=0.55)  # an old operator: ignored
        session.send(epoch=epoch, sequence=2, target_budget=0.8)
        report = session.next_report(lambda r: r.applied_sequence == 2)
        assert report.applied_budget == pytest.approx(0.8) and report.applied_epoch == epoch
        status = worker.stub().GetStatus(control_pb2.StatusRequest(), timeout=5)
        assert (status.applied_epoch, status.applied_sequence) == (epoch, 2)
    finally:
        session.close()


def test_reports_arrive_at_the_interval_the_operator_asks_for(worker, Session):
    session = Session(worker.stub())
    try:
        session.send(epoch=next(_epochs), sequence=1, target_budget=1.0, report_interval_s=0.1)
        session.next_report()
        first = session.next_report()
        stamps = [session.next_report().sent_at_unix_ms for _ in range(5)]
        gaps = [b - a for a, b in zip([first.sent_at_unix_ms] + stamps, stamps)]
        assert max(gaps) < 400  # the default would be 500 ms
    finally:
        session.close()


def test_the_standard_health_service_says_serving(worker):
    stub = health_pb2_grpc.HealthStub(worker.channel())
    for service in ("", "dynasparse.v1.Control"):
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reports_keep_coming_after_the_operator_half_closes_its_side(worker):
    message = control_pb2.ControlMessage(epoch=next(_epochs), sequence=1, target_budget=1.0,
                                         report_interval_s=0.05)
    call = worker.stub().Session(iter([message]))  # sends one update, then half-closes
    try:
        reports = [next(call) for _ in range(6)]
    finally:
        call.cancel()
    assert reports[-1].applied_epoch == message.epoch
