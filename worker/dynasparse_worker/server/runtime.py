"""One worker: HTTP API + gRPC control endpoint + engine (a thread, or a child process), started and
drained together.

`WorkerRuntime(settings).run()` is what `dynasparse serve` awaits; tests start it in a thread with a
pre-loaded model. Start-up order: HTTP (liveness answers at once, readiness 503 "loading") and the
control port come up first, the model loads in a worker thread (or in the engine child process,
see server/engine_process.py), then the engine starts and readiness turns true. Drain (SIGTERM or an operator drain): readiness false at once, admissions go on
for the deregistration delay (while load balancers stop routing here), then are refused; in-flight
requests finish at the floor budget, when empty or after the grace the drain is over.

After a SIGTERM the process then exits. After an operator drain (its node is about to go) it stays
up, idle and not ready, with liveness still true, until a SIGTERM (the pod's deletion, or the
node's shutdown) ends it: a container that exited would be restarted in place by the kubelet
(restart policy Always), loading the model again on the doomed node only to be drained again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn

from dynasparse_worker.control.fast_loop import FastLoopConfig
from dynasparse_worker.control.service import TlsFiles, build_control_server
from dynasparse_worker.control.supervisor import Supervisor
from dynasparse_worker.errors import UserError
from dynasparse_worker.server.actuators import GatedActuator, PendingActuator, UncalibratedActuator
from dynasparse_worker.server.app import WorkerContext, create_app
from dynasparse_worker.server.auth import ApiKey
from dynasparse_worker.server.engine_build import build_engine, engine_info
from dynasparse_worker.server.engine_loop import EngineLoop
from dynasparse_worker.server.engine_process import ProcessStage, engine_process_wanted
from dynasparse_worker.server.engine_stage import ThreadStage
from dynasparse_worker.server.http_protocol import http_protocol_class
from dynasparse_worker.server.limits import DEFAULT_BODY_TIMEOUT_S, DEFAULT_MAX_BODY_BYTES, HttpLimits
from dynasparse_worker.server.metrics import WorkerMetrics

log = logging.getLogger(__name__)


@dataclass
class ServeSettings:
    """Everything `dynasparse serve` can set (see commands/serve.py for the flags)."""

    model: str = "default"
    calibration: str | None = None
    device: str = "auto"
    host: str = "127.0.0.1"
    port: int = 8000  # 0 picks a free port
    control_host: str = "127.0.0.1"
    control_port: int = 50051  # 0 picks a free port
    tls_dir: Path | None = None  # None: no control endpoint (never an insecure one)
    pod_name: str = "worker"
    api_key: str | None = None
    api_key_file: Path | None = None  # re-read when it changes (a mounted Secret)
    metrics_auth: bool = False  # /metrics requires the API key too
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES  # larger bodies get 413
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S  # a body slower than this gets 408
    max_connections: int = 512  # beyond it uvicorn answers 503 (connections + requests in flight)
    keep_alive_s: float = 5.0  # idle connections, and request heads slower than this, are closed
    max_queue: int | None = None  # requests waiting for a KV slot; None: as many as there are slots
    report_interval_s: float = 0.5
    drain_grace_s: float = 30.0
    deregister_s: float = 0.0  # still admitting, not ready, while endpoints drop the pod
    initial_budget: float = 1.0
    quality_min_budget: float | None = None  # the AdaptiveModel's quality bound, as a budget...
    quality_max_loss: float | None = None  # ...or as an expected loss
    uncalibrated_min_budget: float = 1.0
    max_batch_size: int | None = None  # None: CUDA as many as the KV memory holds (up to 256), CPU 16
    max_seq_len: int = 2048
    kv_tokens: int = 8192  # CPU KV capacity; CUDA sizes by memory fraction
    kv_memory_fraction: float = 0.5  # CUDA: of the free memory after the weights, for the KV cache
    default_max_tokens: int = 256
    engine_process: str = "auto"  # the engine in a child process: on, off, auto (on for CUDA)
    fast_loop: FastLoopConfig = field(default_factory=FastLoopConfig)


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: the runtime turns SIGTERM into a drain."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


class WorkerRuntime:
    def __init__(self, settings: ServeSettings, loaded: Any | None = None, gated: Any | None = None):
        """`loaded` / `gated`: an already loaded model and its calibrated `GatedModel` (tests, the
        demo); by default both come from `settings.model` and `settings.calibration`."""
        self.settings = settings
        self._preloaded = loaded
        self._pregated = gated
        self.metrics = WorkerMetrics()
        # until the model has loaded, a calibrated worker does not know its floor: the placeholder
        # lets the --budget through, and attaching the gated actuator raises the floor to the
        # calibrated one (a --budget below it is refused before that, in _start_engine)
        self.actuator = (PendingActuator() if settings.calibration or gated is not None else
                         UncalibratedActuator(settings.uncalibrated_min_budget))
        self.supervisor = Supervisor(
            self.actuator, pod_name=settings.pod_name, model_name=settings.model,
            config=settings.fast_loop, initial_budget=settings.initial_budget,
            report_interval_s=settings.report_interval_s, drain_grace_s=settings.drain_grace_s,
            deregister_s=settings.deregister_s, quality_min_budget=settings.quality_min_budget,
            quality_max_loss=settings.quality_max_loss,
        )
        self.ctx = WorkerContext(self.supervisor, self.metrics, settings.model,
                                 auth=ApiKey(settings.api_key, settings.api_key_file),
                                 metrics_auth=settings.metrics_auth,
                                 limits=HttpLimits(settings.max_body_bytes, settings.body_timeout_s),
                                 default_max_tokens=settings.default_max_tokens)
        self.engine_loop: EngineLoop | None = None
        self.http_port = 0
        self.control_port = 0
        self.started = threading.Event()  # HTTP and control are listening
        self.loaded = threading.Event()  # the model is loaded and the engine runs
        self.drained_clean: bool | None = None
        self.drained = threading.Event()  # the drain is over: idle, not ready, nothing in flight
        self._done: asyncio.Event | None = None
        self._exit_requested: asyncio.Event | None = None  # a SIGTERM: exit once drained
        self._loop: asyncio.AbstractEventLoop | None = None
        self._health = None

    # ---- lifecycle -------------------------------------------------------------------------------
    async def run(self) -> int:
        self._loop = asyncio.get_running_loop()
        self._done = asyncio.Event()
        self._exit_requested = asyncio.Event()
        self.supervisor.drain_listeners.append(self._on_drain_requested)
        self.supervisor.decision_listeners.append(
            lambda timed: self.metrics.decisions.labels(timed.decision.source).inc())
        self._install_signal_handlers()
        http_server, http_task = self._start_http()
        grpc_server, health = await self._start_control()
        self._health = health
        self.started.set()
        try:
            if await self._load_unless_drained():
                if health is not None:
                    await health.set_ready(self.supervisor.ready)
                self.loaded.set()
                await self._done.wait()
        finally:
            if health is not None:
                await health.set_ready(False)
            http_server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(http_task, timeout=5.0)
            if grpc_server is not None:
                await grpc_server.stop(grace=1.0)
            if self.engine_loop is not None:
                await asyncio.to_thread(self.engine_loop.stop)
            self.supervisor.memory.close()
        return 0

    def shutdown_now(self) -> None:
        """Stop without draining (tests, second SIGINT). Thread-safe."""
        if self._loop is not None and self._done is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: already stopped
                self._loop.call_soon_threadsafe(self._done.set)

    def terminate(self, reason: str = "SIGTERM") -> bool:
        """What SIGTERM does: drain, then exit (at once when an operator drain already finished).
        Returns False when a drain was already under way. Thread-safe."""
        if self._loop is None or self._exit_requested is None:
            return False
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: already stopped
            self._loop.call_soon_threadsafe(self._exit_requested.set)
        return self.supervisor.request_drain(reason)

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.terminate, "SIGTERM")

        def on_sigint() -> None:
            if not self.terminate("SIGINT"):
                self.shutdown_now()  # a second Ctrl-C: stop now

        loop.add_signal_handler(signal.SIGINT, on_sigint)

    def _start_http(self) -> tuple[uvicorn.Server, asyncio.Task]:
        s = self.settings
        sock = socket.socket(socket.AF_INET6 if ":" in s.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((s.host, s.port))
        except OSError as exc:
            raise UserError(f"cannot listen on {s.host}:{s.port} ({exc}): choose another --port")
        sock.listen(512)
        self.http_port = sock.getsockname()[1]
        config = uvicorn.Config(create_app(self.ctx), log_level="warning", lifespan="off",
                                timeout_graceful_shutdown=5, access_log=False,
                                http=http_protocol_class(), limit_concurrency=s.max_connections,
                                timeout_keep_alive=s.keep_alive_s)
        server = _QuietServer(config)
        log.info("HTTP API on http://%s:%d", s.host, self.http_port)
        return server, asyncio.create_task(server.serve(sockets=[sock]))

    async def _start_control(self):
        s = self.settings
        if s.tls_dir is None:
            log.warning("no --tls-dir: the gRPC control endpoint is off (it serves mTLS only)")
            return None, None
        server, port, health = build_control_server(self.supervisor, TlsFiles.from_dir(s.tls_dir),
                                                    s.control_host, s.control_port)
        await server.start()
        await health.set_ready(False)
        self.control_port = port
        log.info("control endpoint (mTLS) on %s:%d", s.control_host, port)
        return server, health

    async def _load_unless_drained(self) -> bool:
        """Load the model and start the engine; False if a drain ended the process first (the load
        runs in a daemon thread, so a SIGTERM during a long calibration does not wait for it)."""
        assert self._done is not None
        loop = asyncio.get_running_loop()
        built: asyncio.Future = loop.create_future()

        def build() -> None:
            try:
                result = self._build_stage()
            except BaseException as exc:  # noqa: BLE001 - handed to the event loop
                loop.call_soon_threadsafe(_settle, built, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, built, result, None)

        threading.Thread(target=build, name="model-load", daemon=True).start()
        done = asyncio.ensure_future(self._done.wait())
        await asyncio.wait({built, done}, return_when=asyncio.FIRST_COMPLETED)
        done.cancel()
        if not built.done():
            log.warning("stopped while the model was still loading")
            return False
        self._start_engine(*built.result())
        return True

    def _start_engine(self, stage: Any, info: Any, actuator: Any | None) -> None:
        if actuator is not None:
            self.actuator = actuator
            self.supervisor.attach(self.actuator)
        else:
            log.warning("no --calibration: the model runs dense; budgets are tracked, not applied")
        self.ctx.tokenizer = info.tokenizer
        self.ctx.context_len = info.context_len
        self.ctx.model_name = self.supervisor.model_name = info.model_name
        self.ctx.vocab_size = info.vocab_size
        self.engine_loop = EngineLoop(stage, self.supervisor, self.metrics, tokenizer=info.tokenizer,
                                      max_queue=self.settings.max_queue)
        log.info("engine (%s): %d KV slots of %d tokens, %d decode graphs, admission queue %d",
                 "own process" if isinstance(stage, ProcessStage) else "thread", info.num_slots,
                 info.max_seq_len, info.graphs, self.engine_loop.max_queue)
        self.engine_loop.start(asyncio.get_running_loop())
        self.ctx.engine_loop = self.engine_loop
        self.supervisor.model_loaded = True

    def _build_stage(self) -> tuple[Any, Any, Any | None]:
        """(stage, `EngineInfo`, actuator or None): the engine in a child process, or built here
        and run on a thread (`settings.engine_process`)."""
        s = self.settings
        if engine_process_wanted(s.engine_process, s.device, self._preloaded is not None):
            stage = ProcessStage.launch(s)
            return stage, stage.info, stage.actuator
        engine, loaded, gated = self._build_engine()
        actuator = GatedActuator(engine) if gated is not None else None
        return ThreadStage(engine, self.supervisor), engine_info(engine, loaded, actuator), actuator

    def _build_engine(self):
        return build_engine(self.settings, self._preloaded, self._pregated)

    # ---- drain -----------------------------------------------------------------------------------
    def _on_drain_requested(self, grace_s: float) -> None:
        """Called by the supervisor (on the event loop thread, or any thread: we hop over)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._drain(grace_s)))

    async def _drain(self, grace_s: float) -> None:
        if self._health is not None:
            await self._health.set_ready(False)
        if self.settings.deregister_s > 0:
            log.info("draining: not ready; still admitting for %.1f s while load balancers drop "
                     "this pod", self.settings.deregister_s)
            await asyncio.sleep(self.settings.deregister_s)
        log.info("draining: no new admissions; waiting up to %.0f s for in-flight requests", grace_s)
        loop = self.engine_loop
        self.drained_clean = True if loop is None else await loop.wait_empty(grace_s)
        if not self.drained_clean:
            cut = loop.fail_all("the worker stopped: its drain grace period ran out; retry on "
                                "another replica")
            log.warning("grace period over: %d requests ended with an error event", cut)
            await loop.wait_empty(1.0)  # the streams send their error event and close
        await asyncio.sleep(0.2)  # let the last responses flush
        self.drained.set()
        assert self._done is not None and self._exit_requested is not None
        if not self._exit_requested.is_set():
            log.info("drained: staying up, idle and not ready, until this pod is deleted "
                     "(exiting now would only restart the container on the same node)")
        await self._exit_requested.wait()
        self._done.set()


def _settle(future: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
