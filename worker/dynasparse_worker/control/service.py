"""The gRPC control endpoint: `dynasparse.v1.Control` (Session, GetStatus) and grpc.health.v1, mTLS only.

`build_control_server(supervisor, tls, port)` returns a started-ready `grpc.aio.Server` bound with
server credentials that require a client certificate signed by the configured CA. The PEM files are
read again before each new connection's handshake and used once they form a valid pair, so a
renewed Secret (kubelet rewrites the mounted files) is served without a restart. Called by
server/runtime.py (inside `dynasparse serve`) and by tests. Protobuf conversion lives here so the
supervisor stays plain Python.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from dynasparse_proto import control_pb2, control_pb2_grpc
from dynasparse_proto.contract import (command_from_pb, load_signals_to_pb, mode_to_pb,
                                       quality_curve_to_pb)
from dynasparse_worker.control.pki import pair_matches
from dynasparse_worker.control.supervisor import Snapshot, Supervisor
from dynasparse_worker.errors import UserError

log = logging.getLogger(__name__)

SERVICE_NAME = "dynasparse.v1.Control"


@dataclass(frozen=True)
class TlsFiles:
    """PEM files as a mounted Secret provides them (or `dynasparse dev-certs` writes them)."""

    cert: Path
    key: Path
    client_ca: Path

    @classmethod
    def from_dir(cls, directory: Path) -> "TlsFiles":
        files = cls(directory / "server.crt", directory / "server.key", directory / "ca.crt")
        missing = [p.name for p in (files.cert, files.key, files.client_ca) if not p.is_file()]
        if missing:
            raise UserError(f"--tls-dir {directory} lacks {', '.join(missing)}: "
                            f"run `dynasparse dev-certs --out {directory}` or mount the Secret there")
        return files

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(key, certificate chain, client CA) as the files hold them now."""
        return self.key.read_bytes(), self.cert.read_bytes(), self.client_ca.read_bytes()

    def credentials(self) -> grpc.ServerCredentials:
        """mTLS server credentials that follow the files (see `CertificateReloader`)."""
        return CertificateReloader(self).credentials()


class CertificateReloader:
    """Hands gRPC the files' current certificate before each handshake when they changed and form
    a valid pair; keeps serving the last good one otherwise (a file missing or half-written)."""

    def __init__(self, files: TlsFiles):
        self.files = files
        self._served = files.read()
        if not pair_matches(self._served[1], self._served[0]):
            raise UserError(f"{files.cert} and {files.key} are not a certificate and its key: "
                            f"mount a Secret whose server.crt and server.key belong together")
        self.reloads = 0

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(self._configuration(self._served), self.fetch,
                                                   require_client_authentication=True)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC before every new connection's handshake: None keeps the current one."""
        try:
            current = self.files.read()
        except OSError as exc:
            log.warning("cannot read the TLS files (%s): serving the previous certificate", exc)
            return None
        if current == self._served:
            return None
        key, cert, _ = current
        if not pair_matches(cert, key):
            log.warning("%s does not match %s (mid-update?): serving the previous certificate",
                        self.files.cert, self.files.key)
            return None
        self._served = current
        self.reloads += 1
        log.info("control TLS certificate reloaded from %s", self.files.cert.parent)
        return self._configuration(current)

    @staticmethod
    def _configuration(files: tuple[bytes, bytes, bytes]) -> grpc.ServerCertificateConfiguration:
        key, cert, client_ca = files
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=client_ca)


def report_from_snapshot(s: Snapshot, with_quality_curve: bool = True) -> control_pb2.Report:
    """The Report for `s`; the quality curve only when asked (a Session sends it once)."""
    report = control_pb2.Report(
        pod_name=s.pod_name, model=s.model, sent_at_unix_ms=s.sent_at_unix_ms,
        ttft=control_pb2.LatencySummary(p50_ms=s.ttft.p50_ms, p95_ms=s.ttft.p95_ms,
                                        count=s.ttft.count),
        inter_token=control_pb2.LatencySummary(p50_ms=s.inter_token.p50_ms,
                                               p95_ms=s.inter_token.p95_ms,
                                               count=s.inter_token.count),
        queue_depth=s.queue_depth, running_sequences=s.running, tokens_per_s=s.tokens_per_s,
        applied_budget=s.applied_budget, expected_quality_loss=s.expected_loss,
        floor=s.control.floor, ceiling=s.control.ceiling, mode=mode_to_pb(s.control.mode),
        ready=s.ready, gpu_memory_used_bytes=s.memory.used_bytes,
        gpu_memory_total_bytes=s.memory.total_bytes, memory_source=s.memory.source,
        kv_usage=s.kv_usage, applied_epoch=s.control.epoch,
        applied_sequence=s.control.sequence, min_budget=s.min_budget,
        requests_total=s.requests_total, requests_failed=s.requests_failed,
        warnings=s.warnings,
        load=load_signals_to_pb(s.load),
    )
    if with_quality_curve:
        report.quality_curve.extend(quality_curve_to_pb(s.quality_curve))
    if s.last_decision is not None:
        d = s.last_decision.decision
        report.last_decision.CopyFrom(control_pb2.LocalDecision(
            at_unix_ms=s.last_decision.at_unix_ms, from_budget=d.from_budget,
            to_budget=d.to_budget, reason=d.reason, source=d.source,
        ))
    return report


class ControlServicer(control_pb2_grpc.ControlServicer):
    """Session: apply updates as they arrive; send a Report every report interval (and after each
    applied update, so the ack reaches the operator without waiting a whole interval). The quality
    curve rides in the session's first report and again only when it changes (the model's
    calibration replaces the placeholder's once loading ends)."""

    def __init__(self, supervisor: Supervisor):
        self.supervisor = supervisor

    async def Session(self, request_iterator, context):  # noqa: N802 - gRPC naming
        sup = self.supervisor
        sup.stream_opened()
        peer = context.peer()
        log.info("control session opened by %s", peer)
        wake = asyncio.Event()

        async def read_updates() -> None:
            async for msg in request_iterator:
                if sup.apply_update(command_from_pb(msg)):
                    await asyncio.to_thread(sup.wait_applied, 1.0)  # ack what the model runs
                    log.info("applied update %d/%d from %s: %s", msg.epoch, msg.sequence,
                             msg.sender or peer, msg.reason)
                    wake.set()

        reader = asyncio.create_task(read_updates())
        curve_sent = None
        try:
            while not context.done():
                snapshot = sup.snapshot()
                new_curve = snapshot.quality_curve != curve_sent
                yield report_from_snapshot(snapshot, with_quality_curve=new_curve)
                curve_sent = snapshot.quality_curve
                if reader.done() and not reader.cancelled():
                    reader.result()  # a failed reader ends the session; a half-close does not
                wake.clear()
                sleep = asyncio.create_task(wake.wait())
                waiters = {sleep} if reader.done() else {sleep, reader}
                await asyncio.wait(waiters, timeout=sup.report_interval_s,
                                   return_when=asyncio.FIRST_COMPLETED)
                sleep.cancel()
        finally:
            reader.cancel()
            sup.stream_closed()
            log.info("control session from %s closed", peer)

    async def GetStatus(self, request, context):  # noqa: N802
        return report_from_snapshot(self.supervisor.snapshot())


class HealthReporter:
    """Keeps grpc.health.v1 in step with readiness: SERVING while ready, NOT_SERVING otherwise."""

    def __init__(self, servicer: health.aio.HealthServicer):
        self.servicer = servicer

    async def set_ready(self, ready: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if ready
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", SERVICE_NAME):
            await self.servicer.set(name, status)


def build_control_server(supervisor: Supervisor, tls: TlsFiles, host: str, port: int
                         ) -> tuple[grpc.aio.Server, int, HealthReporter]:
    """A grpc.aio server on host:port (port 0 picks one) with mTLS; returns (server, port, health)."""
    server = grpc.aio.server(options=[
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ])
    control_pb2_grpc.add_ControlServicer_to_server(ControlServicer(supervisor), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = server.add_secure_port(f"{host}:{port}", tls.credentials())
    if bound == 0:
        raise UserError(f"cannot bind the control port {host}:{port}: choose another --control-port")
    return server, bound, HealthReporter(health_servicer)
