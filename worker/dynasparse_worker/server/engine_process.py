"""The engine stage in a child process of its own, so its thread never waits for the HTTP side's
interpreter lock.

Who does what:
* the child (started with the "spawn" context, so it shares no threads or CUDA state with the
  HTTP process) builds the engine itself from the pickled `ServeSettings` (`build_engine`), sends
  an `EngineInfo` (tokenizer, KV slots, EOS ids, the floor, quality and speed curves of its
  `GatedActuator`) once, then loops: apply every command waiting (add, cancel, budget, stop), run
  one step, send ONE message with all of the step's events, the engine's `EngineStats` and the
  step's timings. Its single thread does nothing else.
* the HTTP process keeps admission, handles, queue depth, the supervisor, detokenization, stop
  strings, metrics and delivery (`EngineLoop`, one implementation for both stages). Detokenizing
  there rather than in a second thread of the child keeps the child's interpreter lock to the
  engine alone (a second child thread would bring back the contention this stage removes) and
  keeps one copy of the stop-string logic; the HTTP process has its own lock for the output thread
  and the event loop. A stop string is answered by a cancel command, as in the thread stage.
* budgets: the supervisor (HTTP process) calls `RemoteActuator.set_budget`, which sends a command;
  the child applies it with `Engine.apply_budget` before its next step and sends back what it
  applied, which the supervisor then reports (`Supervisor.record_applied`).

Transport: one duplex `multiprocessing.Pipe` (a socketpair: pickled messages, no feeder thread or
semaphore as a `multiprocessing.Queue` has). Each end has one writer and one reader: in the HTTP
process a sender thread writes (so no caller ever blocks on a full pipe while holding a lock, and
the reader never writes) and a reader thread reads; the child's one thread does both, and it never
blocks on a write for long because the HTTP process's reader always reads. Events travel as plain
tuples (cheaper to pickle than dataclasses).

Messages, child to parent: ("ready", EngineInfo, cpu_s) | ("failed", text) | ("step", events,
EngineStats, between_s, step_s, cpu_s) | ("applied", budget, expected_loss). Parent to child:
("add", id, prompt ids, SamplingParams) | ("cancel", id) | ("budget", b) | ("stop",).
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.util
import os
import queue
import signal
import sys
import threading
import time
import traceback
from typing import Any

from dynasparse_worker.engine.types import EngineStats, SamplingParams, TokenEvent, stop_ids_for
from dynasparse_worker.errors import UserError
from dynasparse_worker.server.actuators import GatedActuator, RemoteActuator
from dynasparse_worker.server.engine_build import EngineInfo, build_engine, engine_info, resolve_device
from dynasparse_worker.server.engine_loop import EngineLoop, StepProfile
from dynasparse_worker.server.engine_stage import apply_command, drive_step

log = logging.getLogger(__name__)

MODES = ("auto", "on", "off")


def engine_process_wanted(mode: str, device: str, preloaded: bool) -> bool:
    """Whether the engine runs in a child process: `mode` "on"/"off", or "auto" (on for CUDA, where
    the engine's thread would otherwise wait for the interpreter lock every step; off on the CPU,
    and off for a model loaded by the caller, which cannot cross to a child)."""
    if mode not in MODES:
        raise UserError(f"--engine-process {mode!r}: choose one of {', '.join(MODES)}")
    if mode == "on" and preloaded:
        raise UserError("--engine-process on: the engine process loads its own model, so a model "
                        "loaded by the caller cannot be served this way; use off")
    if mode == "auto":
        return not preloaded and resolve_device(device).startswith("cuda")
    return mode == "on"


def _pack(ev: TokenEvent) -> tuple:
    return (ev.request_id, ev.token_ids, ev.text, ev.finished, ev.finish_reason, ev.prompt_tokens,
            ev.completion_tokens)


class ProcessStage:
    """The HTTP process's side of the engine child: `launch` starts it and waits for the model."""

    def __init__(self, process: Any, conn: Any, info: EngineInfo, cpu_s: float,
                 idle_tick_s: float = 0.05):
        self.process = process
        self.info = info
        self.num_slots = info.num_slots
        self.idle_tick_s = idle_tick_s
        self._conn = conn
        self._child_cpu = cpu_s
        self._outgoing: queue.SimpleQueue = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._dead = threading.Event()
        self._threads: list[threading.Thread] = []
        self.actuator = RemoteActuator(info, lambda b: self._send(("budget", b))) if info.gated else None

    @classmethod
    def launch(cls, settings: Any) -> ProcessStage:
        """Start the child and wait until it has built its engine; UserError with the child's
        reason if it could not."""
        ctx = multiprocessing.get_context("spawn")
        ours, theirs = ctx.Pipe(duplex=True)
        process = ctx.Process(target=child_main, args=(settings, theirs), name="dynasparse-engine",
                              daemon=True)
        process.start()
        theirs.close()
        try:
            while not ours.poll(0.2):
                if not process.is_alive():
                    raise EOFError
            message = ours.recv()
        except (EOFError, OSError):
            process.join(5)
            raise UserError(f"the engine process exited (code {process.exitcode}) before it had "
                            "loaded the model: see its output above; or serve with "
                            "--engine-process off to load it in this process") from None
        if message[0] == "failed":
            process.join(5)
            raise UserError(f"the engine process could not load the model: {message[1]}")
        log.info("engine process %d has loaded %s", process.pid, message[1].model_name)
        return cls(process, ours, message[1], message[2])

    def stop_ids(self, params: SamplingParams) -> frozenset[int]:
        return stop_ids_for(params, self.info.eos_ids)

    def start(self, host: EngineLoop) -> None:
        for target, name in ((self._write, "engine-sender"), (self._read, "engine-reader")):
            thread = threading.Thread(target=target, args=(host,), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def add(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        self._send(("add", request_id, prompt_token_ids, params))

    def cancel(self, request_id: str) -> None:
        self._send(("cancel", request_id))

    def _send(self, message: tuple) -> None:
        self._outgoing.put(message)

    def stop(self, timeout: float) -> None:
        self._stopping.set()
        self._send(("stop",))
        self._outgoing.put(None)
        self.process.join(timeout)
        if self.process.is_alive():
            log.warning("the engine process did not stop within %.0f s: killing it", timeout)
            self.process.kill()
            self.process.join(timeout)
        for thread in self._threads:
            thread.join(timeout)
        self._conn.close()

    @property
    def alive(self) -> bool:
        return self.process.is_alive() and not self._dead.is_set() and not self._stopping.is_set()

    def _write(self, host: EngineLoop) -> None:
        while (message := self._outgoing.get()) is not None:
            try:
                self._conn.send(message)
            except (OSError, ValueError):  # the child is gone; the reader reports it
                return

    def _read(self, host: EngineLoop) -> None:
        profile = StepProfile(host.host_cpu, engine_cpu=lambda: self._child_cpu)
        stats = EngineStats()
        try:
            while True:
                if not self._conn.poll(self.idle_tick_s):
                    host.on_step(stats)  # the fast loop ticks on while the engine is idle
                    continue
                message = self._conn.recv()
                if message[0] == "step":
                    _, packed, stats, between_s, step_s, self._child_cpu = message
                    host.on_step(stats)
                    events = [TokenEvent(*fields) for fields in packed]
                    host.step_done(events)
                    profile.add(between_s, step_s, len(events), time.perf_counter())
                elif message[0] == "applied" and self.actuator is not None:
                    if self.actuator.confirm(message[1], message[2]):
                        host.supervisor.record_applied(message[2])
        except (EOFError, OSError):
            pass
        self._dead.set()
        if not self._stopping.is_set():
            self.process.join(1.0)
            log.error("the engine process died (exit code %s): ending every open stream with an "
                      "error", self.process.exitcode)
            host.engine_died()


# ---- the child ---------------------------------------------------------------------------------
def child_main(settings: Any, conn: Any) -> None:
    """Entry point of the engine process. A Ctrl-C reaches the whole process group, but stopping
    is the HTTP process's business (it drains, then sends "stop"), so the child ignores SIGINT;
    SIGTERM keeps its default, so the HTTP process can still end a child that is busy loading."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        engine, loaded, gated = build_engine(settings)
        actuator = GatedActuator(engine) if gated is not None else None
        info = engine_info(engine, loaded, actuator)
    except BaseException as exc:  # noqa: BLE001 - reported to the HTTP process, which exits
        if isinstance(exc, UserError):
            text = str(exc)
        else:  # a bug or the machine: the traceback goes to the shared stderr
            traceback.print_exc()
            text = ("".join(traceback.format_exception_only(type(exc), exc)).strip()
                    + " (traceback above; --engine-process off loads the model in the server's "
                    "own process instead)")
        conn.send(("failed", text))
        return
    conn.send(("ready", info, time.thread_time()))
    try:
        _ChildLoop(engine, actuator, conn).run()
    except (EOFError, OSError):  # the HTTP process went away
        pass
    # Nothing here needs an orderly interpreter shutdown (the OS frees the model, the KV cache and
    # the device context), and tearing down torch and the model object by object can take
    # seconds, which the drain would spend waiting: leave at once.
    # Finalizers still run: they release the named semaphores that libraries made in this process.
    multiprocessing.util._run_finalizers()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class _ChildLoop:
    def __init__(self, engine: Any, actuator: GatedActuator | None, conn: Any):
        self.engine = engine
        self.actuator = actuator
        self.conn = conn
        self.live: set[str] = set()  # requests added and not finished (failed if a step raises)

    def run(self) -> None:
        while True:
            began = time.perf_counter()
            events: list[TokenEvent] = []
            wait = 0.0 if self.engine.has_work() else None  # idle: sleep until a command comes
            while self.conn.poll(wait):
                wait = 0.0
                message = self.conn.recv()
                if message[0] == "stop":
                    return
                events += self._command(message)
            if self.engine.has_work():
                stepped = time.perf_counter()
                events += drive_step(self.engine, lambda: list(self.live))
                ended = time.perf_counter()
            elif not events:
                continue
            else:
                stepped = ended = time.perf_counter()
            for ev in events:
                if ev.finished:
                    self.live.discard(ev.request_id)
            self.conn.send(("step", [_pack(ev) for ev in events], self.engine.stats(),
                            stepped - began, ended - stepped, time.thread_time()))

    def _command(self, message: tuple) -> list[TokenEvent]:
        kind = message[0]
        if kind == "budget":
            if self.actuator is not None:
                try:
                    loss = self.actuator.set_budget(message[1])
                except Exception:  # noqa: BLE001 - the old plan stays; the engine goes on
                    log.exception("applying budget %s failed", message[1])
                else:
                    self.conn.send(("applied", self.actuator.budget, loss))
            return []
        if kind == "add":
            self.live.add(message[1])
            return apply_command(self.engine, "add", message[1:])
        return apply_command(self.engine, "cancel", message[1])
