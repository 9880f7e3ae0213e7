"""The operator's control loop against the real worker control server, over real mTLS gRPC.

The worker side is `dynasparse_worker.control` (Supervisor + build_control_server) on loopback,
with a tiny in-test budget actuator instead of a model; the operator side is daemon.ControlLoop
with grpc_client.StreamPool, exactly as the kopf daemon runs it, minus the API server (status
patches and events are collected in lists).
"""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from dynasparse_operator import manifests, pki
from dynasparse_operator.daemon import ControlLoop, LoopDeps, ModelRuntime
from dynasparse_operator.control_law import violates_slo
from dynasparse_operator.grpc_client import ClientTls
from dynasparse_operator.settings import OperatorSettings
from dynasparse_operator.wire import report_from_pb

worker_control = pytest.importorskip("dynasparse_worker.control.service")
from dynasparse_worker.control.supervisor import Supervisor  # noqa: E402

OWNER = manifests.Owner("chat", "team-a", "uid-1")
SPEC = {"model": "default", "replicas": 1, "slo": {"ttftP95Ms": 500},
        "quality": {"minBudget": 0.4}, "control": {"intervalSeconds": 5}}


class Actuator:
    """Stands in for the gated model: remembers the budget, reports a small quality curve."""

    def __init__(self) -> None:
        self.budget = 1.0

    def set_budget(self, budget: float) -> float:
        self.budget = budget
        return (1.0 - budget) * 0.5

    def min_budget(self) -> float:
        return 0.3

    def quality_curve(self) -> list[tuple[float, float]]:
        return [(0.3, 0.35), (0.5, 0.25), (1.0, 0.0)]


def tls_dir(tmp_path, ca):
    leaf = pki.issue(ca, "worker", server=True, dns_names=manifests.worker_dns_names(OWNER))
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    (tmp_path / "server.crt").write_bytes(leaf.cert_pem)
    (tmp_path / "server.key").write_bytes(leaf.key_pem)
    return worker_control.TlsFiles.from_dir(tmp_path)


async def start_worker(tmp_path, ca, port=0):
    sup = Supervisor(Actuator(), pod_name="w0", model_name="chat", window_s=1.0,
                     report_interval_s=0.2)
    sup.model_loaded = True
    server, bound, _ = worker_control.build_control_server(sup, tls_dir(tmp_path, ca), "127.0.0.1", port)
    await server.start()
    return sup, server, bound


def ready_pod(name="w0", ip="127.0.0.1"):
    return {"metadata": {"name": name, "labels": manifests.selector("chat")},
            "spec": {"nodeName": "n1"},
            "status": {"phase": "Running", "podIP": ip,
                       "conditions": [{"type": "Ready", "status": "True"}]}}


class Recorder(ControlLoop):
    """Notes when the first SLO-violating report arrived and when a decision first saw it (the
    loop's own callback and step, unchanged)."""

    violating_at: float | None = None
    violation_decided_at: float | None = None

    async def step(self):
        decision = await super().step()
        if self.violation_decided_at is None and (decision.worst_ratio or 0) > 1:
            self.violation_decided_at = time.monotonic()
        return decision

    def _on_report(self, pod, report, at):
        if self.violating_at is None and violates_slo(report_from_pb(report, at, pod), self.params()):
            self.violating_at = time.monotonic()
        super()._on_report(pod, report, at)


def make_loop(port: int, ca: pki.KeyPair, statuses: list, events: list, client_ca=None) -> Recorder:
    settings = OperatorSettings()
    settings.worker.control_port = port
    settings.control.report_interval_s = 0.2
    client = pki.issue(client_ca or ca, pki.OPERATOR_COMMON_NAME, server=False)

    async def patch_status(ns, name, patch):
        statuses.append(patch)

    deps = LoopDeps(settings=settings, tls=ClientTls(ca.cert_pem, client.cert_pem, client.key_pem),
                    epoch=int(time.time() * 1000), sequence=itertools.count(1), sender="op-test",
                    patch_status=patch_status, emit_event=lambda *e: events.append(e))
    runtime = ModelRuntime(pods={"w0": ready_pod()})
    return Recorder(OWNER, {"spec": SPEC, "metadata": {"generation": 1}, "status": {"budget": 0.9}},
                    runtime, {}, deps)


async def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def test_budget_change_reaches_the_worker_within_a_second_of_a_violating_report(tmp_path):
    ca = pki.make_ca()
    sup, server, port = await start_worker(tmp_path, ca)
    statuses, events = [], []
    loop = make_loop(port, ca, statuses, events)
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop.is_set))
    try:
        loop.runtime.wake.set()
        await wait_for(lambda: sup.control.epoch == loop.epoch)
        assert sup.budget == pytest.approx(0.9), "restart safety: the budget resumes from status"
        assert sup.control.floor == pytest.approx(0.4)
        await asyncio.sleep(0.95)  # requests that arrived after the budget was applied...
        for _ in range(20):
            sup.record_first_token(0.9)  # ...all late: p95 TTFT 900 ms > SLO 500 ms
        await wait_for(lambda: sup.budget < 0.89, timeout=3.0)
        applied_at = time.monotonic()
        assert loop.violating_at is not None
        print(f"violating report -> budget applied at the worker: {1000 * (applied_at - loop.violating_at):.0f} ms")
        assert applied_at - loop.violating_at < 1.0, applied_at - loop.violating_at
        await wait_for(lambda: any("lastDecision" in s for s in statuses))
        decision = next(s["lastDecision"] for s in statuses if "lastDecision" in s)
        assert decision["reason"].startswith("p95 TTFT 900 ms > SLO 500 ms; 20 of 20 first tokens "
                                             "over the SLO since the last change: budget 0.90 → ")
        assert ("Warning", "BudgetLowered", decision["reason"]) in events
        assert sup.control.sequence == loop.sequence_sent
    finally:
        stop.set()
        loop.runtime.wake.set()
        await asyncio.wait_for(task, 5)
        await server.stop(None)


async def test_stream_reconnects_to_a_restarted_worker_and_resends_the_budget(tmp_path):
    ca = pki.make_ca()
    sup, server, port = await start_worker(tmp_path, ca)
    loop = make_loop(port, ca, [], [])
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop.is_set))
    try:
        loop.runtime.wake.set()
        await wait_for(lambda: sup.control.epoch == loop.epoch)
        await server.stop(None)
        await wait_for(lambda: not loop.pool.streams["w0"].connected)
        sup2, server, _ = await start_worker(tmp_path, ca, port)
        await wait_for(lambda: sup2.control.epoch == loop.epoch, timeout=10.0)
        assert sup2.budget == pytest.approx(0.9)
    finally:
        stop.set()
        loop.runtime.wake.set()
        await asyncio.wait_for(task, 5)
        await server.stop(None)


async def test_worker_refuses_an_operator_certificate_from_another_ca(tmp_path):
    ca = pki.make_ca()
    sup, server, port = await start_worker(tmp_path, ca)
    loop = make_loop(port, ca, [], [], client_ca=pki.make_ca())
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop.is_set))
    try:
        loop.runtime.wake.set()
        await wait_for(lambda: "w0" in loop.pool.streams and loop.pool.streams["w0"].last_error)
        await asyncio.sleep(0.5)
        assert not loop.pool.streams["w0"].connected
        assert sup.control.epoch == 0, "no update from an operator the worker cannot verify"
    finally:
        stop.set()
        loop.runtime.wake.set()
        await asyncio.wait_for(task, 5)
        await server.stop(None)
