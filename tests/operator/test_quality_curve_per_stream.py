"""The quality curve crosses the wire once per stream: the worker puts it in a Session's first
report (and again only when it changes), the operator keeps each pod's last one, so a maxLoss
floor holds on every later report. Real worker control server and operator loop over mTLS gRPC."""

from __future__ import annotations

import asyncio

import pytest

from dynasparse_operator import pki
from dynasparse_operator.law_loop import ModelLaw
from dynasparse_operator.law_types import LawParams, LawState, PodFacts
from dynasparse_proto import control_pb2
from dynasparse_proto.contract import quality_curve_to_pb
from test_operator_control_stream import SPEC, Actuator, make_loop, start_worker, wait_for

worker_control = pytest.importorskip("dynasparse_worker.control.service")

CURVE = ((0.3, 0.35), (0.5, 0.25), (1.0, 0.0))  # the test Actuator's curve


class Recalibrated(Actuator):
    def quality_curve(self) -> list[tuple[float, float]]:
        return [(0.3, 0.35), (0.7, 0.25), (1.0, 0.0)]


def tapped(loop) -> list[control_pb2.Report]:
    """The raw reports the loop's law receives, in order."""
    seen: list[control_pb2.Report] = []
    receive = loop.law.on_report

    def tap(pod, report, at, params):
        seen.append(report)
        return receive(pod, report, at, params)

    loop.law.on_report = tap
    return seen


async def run_loop_with_max_loss(tmp_path, max_loss: float):
    ca = pki.make_ca()
    sup, server, port = await start_worker(tmp_path, ca)
    loop = make_loop(port, ca, [], [])
    loop.body["spec"] = {**SPEC, "quality": {"maxLoss": max_loss}}
    seen = tapped(loop)
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop.is_set))
    loop.runtime.wake.set()

    async def close():
        stop.set()
        loop.runtime.wake.set()
        await asyncio.wait_for(task, 5)
        await server.stop(None)

    return sup, loop, seen, close


async def test_only_the_first_report_of_a_session_carries_the_curve_and_the_max_loss_floor_holds(tmp_path):
    sup, loop, seen, close = await run_loop_with_max_loss(tmp_path, 0.3)
    try:
        await wait_for(lambda: len(seen) >= 6, timeout=10.0)
        assert [len(r.quality_curve) for r in seen[:6]] == [3, 0, 0, 0, 0, 0]
        await loop.step()
        assert loop.reports["w0"].quality_curve == CURVE, "the pod's last curve is kept"
        assert loop.decision.floor == pytest.approx(0.5), "maxLoss 0.3 -> the measured point 0.5"
        await wait_for(lambda: sup.control.floor == pytest.approx(0.5))
    finally:
        await close()


async def test_a_changed_curve_is_sent_again_and_moves_the_floor(tmp_path):
    sup, loop, seen, close = await run_loop_with_max_loss(tmp_path, 0.3)
    try:
        await wait_for(lambda: len(seen) >= 2)
        sup.attach(Recalibrated())  # the model finished loading with its own calibration
        await wait_for(lambda: any(r.quality_curve and r.quality_curve[1].budget == 0.7
                                   for r in seen))
        received = len(seen)
        await wait_for(lambda: len(seen) >= received + 2)
        assert len([r for r in seen if r.quality_curve]) == 2, "sent again once, not every report"
        await loop.step()
        assert loop.decision.floor == pytest.approx(0.7)
    finally:
        await close()


async def test_get_status_always_carries_the_curve(tmp_path):
    sup, loop, seen, close = await run_loop_with_max_loss(tmp_path, 0.3)
    try:
        servicer = worker_control.ControlServicer(sup)
        for _ in range(2):
            status = await servicer.GetStatus(control_pb2.StatusRequest(), None)
            assert [(p.budget, p.expected_loss) for p in status.quality_curve] == list(CURVE)
    finally:
        await close()


def report_with(curve=()) -> control_pb2.Report:
    report = control_pb2.Report(min_budget=0.3)
    report.quality_curve.extend(quality_curve_to_pb(curve))
    return report


def test_a_pod_that_is_gone_takes_its_curve_with_it_and_no_other_pod_inherits_one():
    params = LawParams(ttft_slo_ms=500, max_loss=0.3)
    law = ModelLaw(LawState())
    law.on_report("a", report_with(CURVE), 0.0, params)
    law.on_report("a", report_with(), 0.1, params)
    law.on_report("b", report_with(), 0.1, params)
    assert law.reports["a"].quality_curve == CURVE and law.reports["b"].quality_curve == ()
    law.forget({"b"}, {"b"})
    law.on_report("a", report_with(), 0.2, params)  # a new pod of the same name: no curve yet
    assert law.reports["a"].quality_curve == ()
    decision = law.decide([PodFacts("a"), PodFacts("b")], params, 1.0)
    assert decision.floor == 1.0, "no curve to judge maxLoss by: the floor holds the ceiling"
