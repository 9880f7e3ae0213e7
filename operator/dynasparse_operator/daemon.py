"""The per-AdaptiveModel control loop: pods -> streams, reports -> decisions -> budgets and status.

One `ControlLoop` per AdaptiveModel, run by the kopf daemon in handlers.py (`run(stopped)`).
It runs the pure control law every control interval and at once when a report violates the SLO
(`wake`), so a budget change leaves for the workers milliseconds after such a report. Pod and node
events reach it through the shared `Registry` (kopf memo), filled by handlers.py. All I/O goes
through `LoopDeps` callables, so tests can run the loop against real gRPC workers without kopf.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from typing import Any, Awaitable, Callable, Mapping

from dynasparse_operator import epochs, signals, status as status_mod, wire
from dynasparse_operator.grpc_client import StreamPool, TlsSource
from dynasparse_operator.law_loop import ModelLaw
from dynasparse_operator.law_types import Decision, LawParams, LawState, PodReport
from dynasparse_operator.manifests import selector_string, worker_dns_names, Owner
from dynasparse_operator.metrics import OperatorMetrics
from dynasparse_operator.replacement import Replacement, decide_replacement
from dynasparse_operator.settings import OperatorSettings
from dynasparse_operator.spec import AdaptiveModelSpec, parse_spec
from dynasparse_proto import control_pb2
from dynasparse_proto.limits import MAX_WARNINGS, clipped

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ModelRuntime:
    """What the watchers know about one model's pods, and how to wake its loop."""

    pods: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    wake: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)


@dataclasses.dataclass
class Registry:
    """Shared between handlers and loops (lives in kopf's memo, never a module global)."""

    models: dict[tuple[str, str], ModelRuntime] = dataclasses.field(default_factory=dict)
    nodes: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def runtime(self, namespace: str, name: str) -> ModelRuntime:
        return self.models.setdefault((namespace, name), ModelRuntime())

    def wake_models_on(self, node: str) -> None:
        for runtime in self.models.values():
            if any((p.get("spec") or {}).get("nodeName") == node for p in runtime.pods.values()):
                runtime.wake.set()


@dataclasses.dataclass
class LoopDeps:
    """Everything the loop needs from outside."""

    settings: OperatorSettings
    tls: TlsSource  # grpc_client.ClientCertificates renews it; a fixed ClientTls in some tests
    epoch: int  # the operator process's wall-clock epoch; each loop derives its own from status
    sequence: itertools.count
    sender: str
    patch_status: Callable[[str, str, Mapping[str, Any]], Awaitable[None]]
    emit_event: Callable[[str, str, str], None]  # (type, reason, message) on this model
    scale_workers: Callable[[str, str, int], Awaitable[None]] | None = None
    metrics: OperatorMetrics | None = None
    clock: Callable[[], float] = time.monotonic
    renew_worker_tls: Callable[[], Awaitable[None]] | None = None
    """Re-issues the workers' server certificate Secret when due (kubelet then updates the mounted
    files and the workers reload them); called every WORKER_TLS_CHECK_S."""


WORKER_TLS_CHECK_S = 3600.0


def law_params(spec: AdaptiveModelSpec, settings: OperatorSettings) -> LawParams:
    c = settings.control
    return LawParams(
        ttft_slo_ms=spec.slo.ttft_p95_ms, inter_token_slo_ms=spec.slo.inter_token_p95_ms,
        min_budget=spec.quality.min_budget, max_loss=spec.quality.max_loss,
        max_budget=spec.control.max_budget, interval_s=spec.control.interval_s,
        responsiveness=spec.control.responsiveness, setpoint_ratio=c.setpoint_ratio,
        deadband=c.deadband, pressure_ceiling_factor=c.pressure_ceiling_factor,
        stale_after_s=c.stale_after_s, settle_s=c.settle_s, min_samples=c.min_samples,
        replace_disrupted_pods=bool(spec.control.replace_disrupted_pods))


class ControlLoop:
    def __init__(self, owner: Owner, body: Mapping[str, Any], runtime: ModelRuntime,
                 nodes: Mapping[str, Mapping[str, Any]], deps: LoopDeps) -> None:
        self.owner = owner
        self.nodes = nodes  # node name -> Node body, kept current by the node watcher
        self.body = body  # kopf keeps a daemon's body up to date
        self.runtime = runtime
        self.deps = deps
        self.connected: dict[str, bool] = {}
        # Resume from status, and count the restart as a change: no relaxing for two intervals.
        self.law = ModelLaw(dataclasses.replace(status_mod.resume_state(body.get("status")),
                                                last_change_at=deps.clock()))
        # Never below an epoch sent before (persisted in status), whatever the wall clock says;
        # nothing is sent until this loop's epoch is persisted too.
        self.epoch = epochs.starting_epoch(body.get("status"), deps.epoch)
        self.epoch_persisted = False
        self.worker_tls_checked_at = deps.clock()
        self.warned: set[tuple[str, str]] = set()
        self.last_status_at = -1e9
        self.sequence_sent = 0
        self.surge = int((body.get("status") or {}).get("surgeReplicas") or 0)
        self.replacement = Replacement(self.surge > 0, "")
        self._params: LawParams | None = None  # as of the last step (see `params`)
        self.last_events: set[str] = set()
        self.last_problems: set[str] = set()
        self.pool = StreamPool(deps.tls, worker_dns_names(owner)[0],
                               deps.settings.worker.control_port, self._on_report,
                               deps.settings.grpc, self._on_stream_state)

    @property
    def reports(self) -> dict[str, PodReport]:
        return self.law.reports

    @property
    def state(self) -> LawState:
        return self.law.state

    @property
    def last_sent(self) -> dict[str, tuple]:
        return self.law.last_sent

    @property
    def decision(self) -> Decision | None:
        return self.law.decision

    # --- callbacks from streams --------------------------------------------------------------------

    def _on_report(self, pod: str, report: control_pb2.Report, at: float) -> None:
        self._check_epoch(pod, int(report.applied_epoch))
        self._warnings(pod, report.warnings)
        if self.law.on_report(pod, report, at, self.params()):
            self.runtime.wake.set()  # a new pod's bounds, an SLO violation or a leading signal

    def _check_epoch(self, pod: str, applied: int) -> None:
        """A worker runs an epoch beyond ours (a lost status write, another operator's clock):
        move past it, or every command we send would be ignored as stale."""
        newer = epochs.overtaken(self.epoch, applied, int(time.time() * 1000))
        if newer is None:
            return
        log.warning("%s/%s: pod %s applied epoch %d, beyond ours (%d): continuing at %d",
                    self.owner.namespace, self.owner.name, pod, applied, self.epoch, newer)
        self.epoch, self.epoch_persisted = newer, False
        self.last_sent.clear()  # resend every pod its command under the new epoch
        self.runtime.wake.set()

    def _warnings(self, pod: str, warnings) -> None:
        """A worker refused a control message: one Warning event per pod and text (a few, clipped:
        reports are untrusted too)."""
        for text in list(warnings)[:MAX_WARNINGS]:
            text = clipped(text)
            key = (pod, text)
            if key in self.warned:
                continue
            if len(self.warned) > 256:
                self.warned.clear()
            self.warned.add(key)
            log.warning("%s/%s: pod %s: %s", self.owner.namespace, self.owner.name, pod, text)
            self.deps.emit_event("Warning", "ControlMessageRefused", f"pod {pod}: {text}")

    def _on_stream_state(self, pod: str, connected: bool, detail: str) -> None:
        self.connected[pod] = connected
        if not connected:
            log.info("%s/%s: stream to %s down: %s", self.owner.namespace, self.owner.name, pod, detail)

    # --- the loop ------------------------------------------------------------------------------------

    def spec(self) -> AdaptiveModelSpec:
        return parse_spec(self.body.get("spec") or {})

    def params(self) -> LawParams:
        """The law's parameters as the last step read them from the spec: every report is judged
        against them, and parsing the spec once per report would cost more than the report
        (a spec change wakes the loop, so the next step reads it at once)."""
        if self._params is None:
            self._params = law_params(self.spec(), self.deps.settings)
        return self._params

    async def run(self, stopped: Callable[[], bool]) -> None:
        try:
            while not stopped():
                try:
                    await asyncio.wait_for(self.runtime.wake.wait(), self.params().interval_s)
                except asyncio.TimeoutError:
                    pass
                self.runtime.wake.clear()
                if stopped():
                    break
                try:
                    await self.step()
                except Exception:  # noqa: BLE001 - one bad step must not end the loop
                    log.exception("%s/%s: control step failed", self.owner.namespace, self.owner.name)
        finally:
            await self.pool.close()

    async def step(self) -> Decision:
        spec = self.spec()
        keys = signals.effective_signals(self.deps.settings.signals, spec.signals)
        pod_bodies = list(self.runtime.pods.values())
        ready = {p["metadata"]["name"]: p["status"]["podIP"] for p in pod_bodies if signals.pod_ready(p)}
        # Only the nodes this model's pods run on: the cluster may have thousands, and every
        # model's loop steps every interval.
        hosts = {(p.get("spec") or {}).get("nodeName") for p in pod_bodies}
        nodes = {name: signals.node_facts(self.nodes[name], keys) for name in hosts
                 if name and name in self.nodes}
        facts = signals.pod_facts(pod_bodies, nodes, keys)
        self.replacement = decide_replacement(
            spec.control.replace_disrupted_pods, [f for f in facts if f.disruption], pod_bodies,
            keys.notice_lead_s, replacing=self.surge > 0)
        params = self._params = dataclasses.replace(law_params(spec, self.deps.settings),
                                                    replace_disrupted_pods=self.replacement.on)
        addresses = {f.name: _ip(self.runtime.pods[f.name]) for f in facts}
        await self.pool.sync({name: ip for name, ip in addresses.items() if ip})
        self.law.forget(self.runtime.pods, self.pool.streams)
        now = self.deps.clock()
        decision = self.law.decide(facts, params, now)
        if await self._persist_epoch():
            self._send(decision, params, spec)
        await self._surge(decision, spec)
        self._events(decision)
        if self.deps.metrics:
            self.deps.metrics.observe(self.owner.namespace, self.owner.name, decision,
                                      sum(1 for s in self.pool.streams.values() if s.connected))
        if decision.changed or now - self.last_status_at >= max(1.0, params.interval_s):
            self.last_status_at = now
            await self._write_status(decision, spec, facts, len(pod_bodies), len(ready))
        await self._renew_worker_tls(now)
        return decision

    async def _renew_worker_tls(self, now: float) -> None:
        if self.deps.renew_worker_tls is None or now - self.worker_tls_checked_at < WORKER_TLS_CHECK_S:
            return
        self.worker_tls_checked_at = now
        try:
            await self.deps.renew_worker_tls()
        except Exception as exc:  # noqa: BLE001 - retried at the next check; certificates last months
            self.worker_tls_checked_at = now - WORKER_TLS_CHECK_S + 60.0
            log.warning("%s/%s: worker certificate renewal failed (retrying in a minute): %s",
                        self.owner.namespace, self.owner.name, exc)

    async def _persist_epoch(self) -> bool:
        """Write this loop's epoch to status before the first command carries it (True once it is
        there), so a restarted operator starts above it even if its clock went back."""
        if self.epoch_persisted:
            return True
        try:
            await self.deps.patch_status(self.owner.namespace, self.owner.name, {"epoch": self.epoch})
        except Exception as exc:  # noqa: BLE001 - retried at the next step; nothing sent meanwhile
            log.warning("%s/%s: cannot persist epoch %d, holding commands: %s",
                        self.owner.namespace, self.owner.name, self.epoch, exc)
            return False
        self.epoch_persisted = True
        return True

    def _send(self, decision: Decision, params: LawParams, spec: AdaptiveModelSpec) -> None:
        """Send each pod its command when it changed, or as a refresh every few intervals."""
        now = decision.at
        for cmd in self.law.due(decision.commands.values(), params, now):
            stream = self.pool.streams.get(cmd.name)
            if stream is None:
                continue
            self.sequence_sent = next(self.deps.sequence)
            stream.send(wire.command_to_pb(
                cmd, params, epoch=self.epoch, sequence=self.sequence_sent,
                sender=self.deps.sender, report_interval_s=self.deps.settings.control.report_interval_s,
                drain_grace_s=float(spec.worker.drain_grace_s)))
            self.law.sent(cmd, now)

    async def _surge(self, decision: Decision, spec: AdaptiveModelSpec) -> None:
        if self.deps.scale_workers is None or decision.surge_replicas == self.surge:
            return
        try:
            await self.deps.scale_workers(self.owner.namespace, self.owner.name,
                                          spec.replicas + decision.surge_replicas)
        except Exception as exc:  # noqa: BLE001 - surge stays unchanged: the next step retries
            log.warning("%s/%s: scaling to %d replicas failed (retrying next step): %s",
                        self.owner.namespace, self.owner.name, spec.replicas + decision.surge_replicas, exc)
            return
        self.surge = decision.surge_replicas  # only once the Deployment has it
        self.deps.emit_event("Normal", "ReplacingCapacity", (
            f"{self.surge} draining pod{'s' if self.surge != 1 else ''}: replicas "
            f"{spec.replicas} → {spec.replicas + self.surge} until they are gone "
            f"({self.replacement.reason})") if self.surge
            else f"no pods draining: replicas back to {spec.replicas}")

    def _events(self, decision: Decision) -> None:
        event = status_mod.event_for(decision)
        if event:
            self.deps.emit_event(*event)
        current = set(decision.events)
        for message in sorted(current - self.last_events):
            if "draining" not in message:  # the disruption decision already said so
                self.deps.emit_event("Warning", "NodePressure", message)
        self.last_events = current
        for message in sorted(set(decision.problems) - self.last_problems):
            self.deps.emit_event("Warning", "InvalidQualityBounds", message)
        self.last_problems = set(decision.problems)

    async def _write_status(self, decision: Decision, spec: AdaptiveModelSpec, facts, existing: int,
                            ready: int) -> None:
        body_status = self.body.get("status") or {}
        patch = status_mod.status_patch(status_mod.StatusInput(
            rejected=body_status.get("specRejected") or "",
            generation=int((self.body.get("metadata") or {}).get("generation") or 0),
            desired_replicas=spec.replicas, existing_pods=existing, ready_pods=ready,
            selector=selector_string(self.owner.name), decision=decision, pods=facts,
            reports=self.reports, connected=self.connected, ttft_slo_ms=spec.slo.ttft_p95_ms,
            epoch=self.epoch, sequence=self.sequence_sent, surge_replicas=self.surge,
            previous_conditions=body_status.get("conditions") or ()))
        try:
            await self.deps.patch_status(self.owner.namespace, self.owner.name, patch)
        except Exception as exc:  # noqa: BLE001 - status is best effort; the loop goes on
            log.warning("%s/%s: status patch failed: %s", self.owner.namespace, self.owner.name, exc)


def _ip(pod: Mapping[str, Any]) -> str:
    return (pod.get("status") or {}).get("podIP") or ""
