"""Simulated workers: many `dynasparse.v1.Control` servers in one process, each on its own address.

A `SimWorker` speaks the worker's side of the control contract without a model: it applies an
update only when its (epoch, sequence) is newer, clamps the target into the update's bounds (a zero
field keeps the previous value), reports every `report_interval_s` the operator asks for (clamped
as workers clamp it) and at once after each applied update. Its TLS is the worker's own
(`TlsFiles(...).credentials()`: mTLS, client certificate required, files reread before each
handshake).

`Fleet.violate` makes one pod report an SLO violation (p95 TTFT `ratio` × the SLO, a queue) from
its next report on, sent at once; the `Episode` notes when that report left, when a lower budget
arrived back at that pod, and when every pod of its model had one. The pod reports healthy again
(p95 at `HEALTHY_RATIO` of the SLO, inside the law's hold band) once its budget was lowered.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import grpc

from dynasparse.scale_bench.plan import Plan
from dynasparse_proto import control_pb2, control_pb2_grpc
from dynasparse_proto.contract import Mode, mode_to_pb, quality_curve_to_pb
from dynasparse_proto.limits import REPORT_INTERVAL_RANGE_S
from dynasparse_worker.control.service import TlsFiles

HEALTHY_RATIO = 0.7
QUALITY_CURVE = ((0.05, 0.9), (0.1, 0.6), (0.2, 0.35), (0.3, 0.2), (0.5, 0.08), (0.75, 0.02),
                 (1.0, 0.0))


@dataclasses.dataclass
class Episode:
    """One violation: from the violating report leaving its pod to lower budgets arriving back."""

    model: str
    pod: str
    round: int
    ratio: float
    pending: set[str]  # pods of the model whose budget has not been lowered yet
    started: float | None = None  # monotonic: the first violating report was handed to gRPC
    started_unix_ms: int = 0  # the same moment on the wall clock (the report's sent_at)
    command_sent_unix_ms: int = 0  # when the operator built the lower budget's command (its sent_at)
    own_at: float | None = None  # the violating pod got a lower budget
    all_at: float | None = None  # every pod of the model had one

    @property
    def own_s(self) -> float | None:
        return None if self.own_at is None or self.started is None else self.own_at - self.started

    @property
    def operator_s(self) -> float | None:
        """Report leaving -> the operator building the command (wall clock, ms resolution): the
        uplink and the decision, without the fan-out back to the pods."""
        if self.own_at is None or not self.started_unix_ms:
            return None
        return max(0.0, (self.command_sent_unix_ms - self.started_unix_ms) / 1000)

    @property
    def all_s(self) -> float | None:
        return None if self.all_at is None or self.started is None else self.all_at - self.started


class SimWorker(control_pb2_grpc.ControlServicer):
    def __init__(self, pod: str, model: str, fleet: "Fleet") -> None:
        self.pod, self.model, self.fleet = pod, model, fleet
        self.applied = (0, 0)  # (epoch, sequence) of the last applied update
        self.budget, self.floor, self.ceiling = 1.0, 0.0, 1.0
        self.report_interval_s = fleet.plan.report_interval_s
        self.violation: Episode | None = None
        self.wake = asyncio.Event()
        self.updates = 0
        self.reports = 0

    async def Session(self, request_iterator, context):
        reader = asyncio.ensure_future(self._read(request_iterator))
        first = True
        try:
            while not reader.done():
                report = self._report(with_quality_curve=first)  # the curve: once per stream
                first = False
                episode = self.violation
                if episode is not None and episode.started is None:
                    episode.started = time.monotonic()
                    episode.started_unix_ms = report.sent_at_unix_ms
                self.wake.clear()
                await context.write(report)
                self.reports += 1
                try:
                    await asyncio.wait_for(self.wake.wait(), self.report_interval_s)
                except asyncio.TimeoutError:
                    pass
        finally:
            reader.cancel()

    async def GetStatus(self, request, context):
        return self._report()

    async def _read(self, request_iterator) -> None:
        async for message in request_iterator:
            self._apply(message, time.monotonic())

    def _apply(self, msg: control_pb2.ControlMessage, now: float) -> None:
        key = (msg.epoch, msg.sequence)
        if key <= self.applied:
            return  # a resend of what is applied already
        self.applied = key
        self.updates += 1
        if msg.report_interval_s:
            low, high = REPORT_INTERVAL_RANGE_S
            self.report_interval_s = min(high, max(low, msg.report_interval_s))
        self.floor = msg.floor or self.floor
        self.ceiling = max(msg.ceiling or self.ceiling, self.floor)
        before = self.budget
        self.budget = min(self.ceiling, max(self.floor, msg.target_budget or before))
        if self.budget < before - 1e-9:
            self.fleet.lowered(self, now, msg.sent_at_unix_ms)
        self.wake.set()  # report at once after an applied update, as workers do

    def _report(self, with_quality_curve: bool = True) -> control_pb2.Report:
        slo = self.fleet.plan.ttft_slo_ms
        violating = self.violation is not None
        ratio = self.violation.ratio if violating else HEALTHY_RATIO
        count = 50 if violating else 20
        report = control_pb2.Report(
            pod_name=self.pod, model=self.model, sent_at_unix_ms=int(time.time() * 1000),
            ttft=control_pb2.LatencySummary(p50_ms=0.6 * ratio * slo, p95_ms=ratio * slo, count=count),
            inter_token=control_pb2.LatencySummary(p50_ms=20.0, p95_ms=30.0, count=16 * count),
            queue_depth=8 if violating else 0, running_sequences=4, tokens_per_s=400.0 / self.budget,
            applied_budget=self.budget, expected_quality_loss=1.0 - self.budget,
            floor=self.floor, ceiling=self.ceiling, mode=mode_to_pb(Mode.NORMAL), ready=True,
            memory_source="fallback:process-rss", kv_usage=0.3,
            applied_epoch=self.applied[0], applied_sequence=self.applied[1],
            min_budget=self.fleet.plan.min_budget, requests_total=100 * self.reports)
        if with_quality_curve:
            report.quality_curve.extend(quality_curve_to_pb(QUALITY_CURVE))
        return report


class Fleet:
    """Every pod of a plan, served from this process."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.workers: dict[str, SimWorker] = {}
        self.pods_of: dict[str, list[str]] = {}
        self.servers: list[grpc.aio.Server] = []
        self.episodes: list[Episode] = []
        self.open: dict[str, Episode] = {}  # model -> its unresolved episode

    async def start(self) -> None:
        for model in self.plan.models:
            files = TlsFiles.from_dir(Path(model.tls_dir))
            self.pods_of[model.name] = list(model.pods)
            for pod, ip in model.pods.items():
                worker = SimWorker(pod, model.name, self)
                server = grpc.aio.server()
                control_pb2_grpc.add_ControlServicer_to_server(worker, server)
                address = f"{ip}:{self.plan.port}"
                if not server.add_secure_port(address, files.credentials()):
                    raise RuntimeError(f"cannot listen on {address}")
                await server.start()
                self.workers[pod] = worker
                self.servers.append(server)

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop(None) for s in self.servers))

    def reports_sent(self) -> int:
        return sum(w.reports for w in self.workers.values())

    def steered(self) -> int:
        """Pods that applied an update from the operator."""
        return sum(1 for w in self.workers.values() if w.updates)

    def violate(self, model: str, pod_index: int, round_: int, ratio: float) -> Episode | None:
        """Pod `pod_index` of `model` reports p95 = ratio × SLO from now on (None while the
        model's previous episode is unresolved)."""
        if model in self.open:
            return None
        pods = self.pods_of[model]
        pod = pods[pod_index % len(pods)]
        episode = Episode(model, pod, round_, ratio, pending=set(pods))
        self.episodes.append(episode)
        self.open[model] = episode
        worker = self.workers[pod]
        worker.violation = episode
        worker.wake.set()
        return episode

    def lowered(self, worker: SimWorker, now: float, command_sent_unix_ms: int) -> None:
        episode = self.open.get(worker.model)
        if episode is None or episode.started is None:
            return
        if worker.pod == episode.pod and episode.own_at is None:
            episode.own_at = now
            episode.command_sent_unix_ms = command_sent_unix_ms
            worker.violation = None  # its latency is back inside the SLO
        episode.pending.discard(worker.pod)
        if not episode.pending:
            episode.all_at = now
            del self.open[worker.model]

    def give_up(self, model: str) -> None:
        """End an unresolved episode (it stays recorded without its times)."""
        episode = self.open.pop(model, None)
        if episode is not None and self.workers[episode.pod].violation is episode:
            self.workers[episode.pod].violation = None
