"""The demo's local controller starts each run clean: no decision on latencies from before the run.

The worker's p95 is over a 30 s window; right after the capacity probe it still holds the probe's
queueing. These tests feed the controller reports directly (no worker, no gRPC) and read the
commands it would send.
"""

import asyncio

from dynasparse.demo.controller import POD, LocalController
from dynasparse_operator.grpc_client import ClientTls
from dynasparse_operator.law_types import LawParams
from dynasparse_proto import control_pb2

SLO_MS = 1000.0


class RecordingPool:
    """Stands in for the gRPC stream pool: keeps what the controller sends."""

    def __init__(self):
        self.sent: list[control_pb2.ControlMessage] = []

    def send(self, pod, message):
        assert pod == POD
        self.sent.append(message)
        return True


def make_controller() -> tuple[LocalController, RecordingPool]:
    params = LawParams(ttft_slo_ms=SLO_MS, interval_s=1.0, responsiveness=0.6, min_budget=0.4,
                       min_samples=3, stale_after_s=3.0)
    controller = LocalController("127.0.0.1", 1, ClientTls(b"", b"", b""), params)
    pool = RecordingPool()
    controller._pool = pool
    return controller, pool


def report(controller: LocalController, ttft_p95_ms: float, samples: int) -> control_pb2.Report:
    return control_pb2.Report(
        pod_name=POD, applied_epoch=controller._epoch, applied_sequence=1, applied_budget=1.0,
        ttft=control_pb2.LatencySummary(p50_ms=ttft_p95_ms, p95_ms=ttft_p95_ms, count=samples),
        inter_token=control_pb2.LatencySummary(p50_ms=50.0, p95_ms=50.0, count=samples * 5),
        ready=True, min_budget=0.3)


def test_budget_holds_at_one_while_the_window_still_holds_the_probes_latencies():
    controller, pool = make_controller()
    controller._on_report(POD, report(controller, ttft_p95_ms=3 * SLO_MS, samples=20), 0.0)
    controller._step()
    assert pool.sent[-1].target_budget == 1.0
    assert pool.sent[-1].floor == 1.0  # the worker's fast loop may not move it either
    assert "until the run starts" in controller.view.reason


def test_law_cuts_the_budget_once_the_run_has_started_and_p95_exceeds_the_slo():
    controller, pool = make_controller()
    controller.start_run()
    controller._on_report(POD, report(controller, ttft_p95_ms=3 * SLO_MS, samples=20), 0.0)
    controller._step()
    assert pool.sent[-1].target_budget < 1.0
    assert "SLO" in controller.view.reason


def test_window_is_clean_only_when_a_report_under_our_epoch_holds_no_sample():
    controller, _ = make_controller()

    async def wait(samples: int) -> bool:
        controller._on_report(POD, report(controller, ttft_p95_ms=500.0, samples=samples), 0.0)
        return await controller.wait_until_window_clean(timeout_s=0.3)

    assert asyncio.run(wait(samples=4)) is False
    assert asyncio.run(wait(samples=0)) is True


def test_an_aging_queue_wakes_the_demo_at_once_as_it_wakes_the_operator():
    controller, _ = make_controller()
    controller.start_run()
    controller._wake.clear()
    calm = report(controller, ttft_p95_ms=100.0, samples=20)
    controller._on_report(POD, calm, 0.0)  # the first report: a new pod, as the daemon sees it
    controller._wake.clear()
    controller._on_report(POD, calm, 0.0)
    assert not controller._wake.is_set()
    aging = report(controller, ttft_p95_ms=100.0, samples=20)
    aging.load.oldest_waiting_s = 0.9 * SLO_MS / 1000  # no p95 over the SLO yet, but a request waits
    controller._on_report(POD, aging, 0.0)
    assert controller._wake.is_set()


def test_the_demo_keeps_the_workers_quality_curve_from_the_first_report_of_its_stream():
    params = LawParams(ttft_slo_ms=SLO_MS, interval_s=1.0, max_loss=0.2, min_samples=3)
    controller = LocalController("127.0.0.1", 1, ClientTls(b"", b"", b""), params)
    controller._pool = pool = RecordingPool()
    controller.start_run()
    first = report(controller, ttft_p95_ms=100.0, samples=20)
    first.quality_curve.add(budget=0.4, expected_loss=0.5)
    first.quality_curve.add(budget=0.6, expected_loss=0.2)
    first.quality_curve.add(budget=1.0, expected_loss=0.0)
    controller._on_report(POD, first, 0.0)
    controller._on_report(POD, report(controller, ttft_p95_ms=3 * SLO_MS, samples=20), 0.0)
    controller._step()
    assert controller.view.last_decision.floor == 0.6
    assert pool.sent[-1].floor == 0.6 and pool.sent[-1].target_budget >= 0.6
