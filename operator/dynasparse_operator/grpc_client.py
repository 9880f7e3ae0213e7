"""The operator's side of the control streams: one mTLS `Control.Session` per ready worker pod.

`StreamPool.sync({pod: ip})` (called by the daemon whenever its pods change) opens a
`WorkerStream` for each new pod and closes the ones that went away. A stream sends the latest
ControlMessage given to `send()` (and resends it after a reconnect; the worker ignores an
(epoch, sequence) it has already applied), and hands every Report to the daemon's callback.
Reconnects back off exponentially. The client certificate comes from a `TlsSource`:
`ClientCertificates` re-issues it from the CA once two thirds of its lifetime have passed, and each
open stream then reconnects with the new one at once. No kopf, no kubernetes here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
from typing import Callable, Protocol

import grpc

from dynasparse_operator import pki
from dynasparse_operator.settings import GrpcSettings
from dynasparse_proto import control_pb2, control_pb2_grpc

log = logging.getLogger(__name__)

ReportCallback = Callable[[str, control_pb2.Report, float], None]
StateCallback = Callable[[str, bool, str], None]  # (pod, connected, detail)


@dataclasses.dataclass(frozen=True)
class ClientTls:
    """The operator's client certificate and the CA that signed the workers' certificates (PEM)."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    generation = 0  # a fixed certificate is never renewed

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.ca_pem,
                                            private_key=self.key_pem,
                                            certificate_chain=self.cert_pem)

    def current(self) -> "ClientTls":
        return self


class TlsSource(Protocol):
    """Where streams get the client certificate: `current()` before each connection and every
    CERT_CHECK_S while connected; a changed `generation` means reconnect with the new one."""

    generation: int

    def current(self) -> ClientTls: ...


CERT_CHECK_S = 1.0
OPERATOR_CERT_DAYS = 30.0


class ClientCertificates:
    """The operator's client certificate, signed by its CA and renewed (a new key too) once
    pki.RENEW_AFTER of its lifetime has passed; `clock` (UTC) stamps and judges validity."""

    def __init__(self, ca: pki.KeyPair, *, days: float = OPERATOR_CERT_DAYS,
                 clock: Callable[[], dt.datetime] = pki.utc_now) -> None:
        self._ca = ca
        self._days = days
        self._clock = clock
        self.generation = 0
        self._tls, self._due = self._issue()

    def current(self) -> ClientTls:
        if self._clock() >= self._due:
            self._tls, self._due = self._issue()
            self.generation += 1
            log.info("operator client certificate renewed (generation %d), next renewal at %s",
                     self.generation, self._due.isoformat())
        return self._tls

    def _issue(self) -> tuple[ClientTls, dt.datetime]:
        leaf = pki.issue(self._ca, pki.OPERATOR_COMMON_NAME, server=False, days=self._days,
                         now=self._clock())
        tls = ClientTls(self._ca.cert_pem, leaf.cert_pem, leaf.key_pem)
        return tls, pki.renewal_due_at(leaf.cert_pem)


class WorkerStream:
    """One pod's Session, kept open until `close()`."""

    def __init__(self, pod: str, address: str, tls: TlsSource, server_name: str,
                 on_report: ReportCallback, settings: GrpcSettings,
                 on_state: StateCallback | None = None) -> None:
        self.pod = pod
        self.address = address
        self._tls = tls
        self._server_name = server_name
        self._on_report = on_report
        self._on_state = on_state
        self._settings = settings
        self._latest: control_pb2.ControlMessage | None = None
        self._outbox: asyncio.Queue[control_pb2.ControlMessage] | None = None
        self._task: asyncio.Task | None = None
        self.connected = False
        self.last_error = ""

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"control-stream-{self.pod}")

    def send(self, message: control_pb2.ControlMessage) -> None:
        """Queue `message` on the open stream (and remember it for the next connection)."""
        self._latest = message
        if self._outbox is not None:
            self._outbox.put_nowait(message)

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _set_state(self, connected: bool, detail: str) -> None:
        if connected != self.connected or (not connected and detail != self.last_error):
            self.connected = connected
            self.last_error = "" if connected else detail
            if self._on_state:
                self._on_state(self.pod, connected, detail)

    async def _run(self) -> None:
        delay = self._settings.backoff_initial_s
        while True:
            started = time.monotonic()
            try:
                if await self._session():
                    log.info("control stream to %s: reconnecting with the renewed client "
                             "certificate", self.pod)
                    delay = self._settings.backoff_initial_s
                    continue
                detail = "stream ended by the worker"
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                detail = f"{exc.code().name}: {exc.details()}"
            except Exception as exc:  # noqa: BLE001 - any failure means reconnect
                detail = f"{type(exc).__name__}: {exc}"
            log.log(logging.INFO if self.connected or detail != self.last_error else logging.DEBUG,
                    "control stream to %s (%s) lost: %s; retrying in %.1fs", self.pod,
                    self.address, detail, delay)
            self._set_state(False, detail)
            if time.monotonic() - started > 10 * self._settings.backoff_max_s:
                delay = self._settings.backoff_initial_s  # it had been up a while: start over
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._settings.backoff_max_s)

    async def _session(self) -> bool:
        """One connection and Session; True when it ended because the certificate was renewed."""
        tls, generation = self._tls.current(), self._tls.generation
        options = [("grpc.ssl_target_name_override", self._server_name),
                   ("grpc.default_authority", self._server_name),
                   ("grpc.keepalive_time_ms", 10_000), ("grpc.keepalive_timeout_ms", 5_000),
                   ("grpc.keepalive_permit_without_calls", 1)]
        async with grpc.aio.secure_channel(self.address, tls.credentials(), options=options) as channel:
            await asyncio.wait_for(channel.channel_ready(), self._settings.connect_timeout_s)
            outbox: asyncio.Queue[control_pb2.ControlMessage] = asyncio.Queue()
            if self._latest is not None:
                outbox.put_nowait(self._latest)
            self._outbox = outbox
            try:
                call = control_pb2_grpc.ControlStub(channel).Session(_drain(outbox))
                self._set_state(True, "")
                reader = asyncio.ensure_future(self._read(call))
                try:
                    while not (await asyncio.wait({reader}, timeout=CERT_CHECK_S))[0]:
                        self._tls.current()
                        if self._tls.generation != generation:
                            return True
                    reader.result()
                    return False
                finally:
                    reader.cancel()
                    await asyncio.gather(reader, return_exceptions=True)
            finally:
                self._outbox = None

    async def _read(self, call) -> None:
        async for report in call:
            self._on_report(self.pod, report, time.monotonic())


async def _drain(outbox: asyncio.Queue):
    while True:
        yield await outbox.get()


class StreamPool:
    """The streams of one AdaptiveModel's pods."""

    def __init__(self, tls: TlsSource, server_name: str, port: int, on_report: ReportCallback,
                 settings: GrpcSettings, on_state: StateCallback | None = None) -> None:
        self._tls = tls
        self._server_name = server_name
        self._port = port
        self._on_report = on_report
        self._on_state = on_state
        self._settings = settings
        self.streams: dict[str, WorkerStream] = {}

    async def sync(self, pods: dict[str, str]) -> None:
        """Make the open streams match `pods` (name -> IP): open new, close gone or moved."""
        for name in list(self.streams):
            stream = self.streams[name]
            if name not in pods or stream.address != self._address(pods[name]):
                del self.streams[name]
                await stream.close()
        for name, ip in pods.items():
            if name not in self.streams:
                stream = WorkerStream(name, self._address(ip), self._tls, self._server_name,
                                      self._on_report, self._settings, self._on_state)
                stream.start()
                self.streams[name] = stream

    def send(self, pod: str, message: control_pb2.ControlMessage) -> bool:
        stream = self.streams.get(pod)
        if stream is None:
            return False
        stream.send(message)
        return True

    async def close(self) -> None:
        await self.sync({})

    def _address(self, ip: str) -> str:
        return f"[{ip}]:{self._port}" if ":" in ip else f"{ip}:{self._port}"
