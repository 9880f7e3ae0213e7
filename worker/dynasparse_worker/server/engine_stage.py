"""The engine stage in this process: one engine thread, plus what every engine stage shares.

`ThreadStage` runs the `Engine` on a thread of the worker process, next to the output thread and
the event loop (the three share one interpreter lock). `drive_step` and `apply_command` are the
engine-side work of one step, used by this thread and by the engine child process alike
(server/engine_process.py), so both stages admit, cancel and isolate failures the same way.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from typing import Any, Callable

from dynasparse_worker.control.supervisor import Supervisor
from dynasparse_worker.engine.types import SamplingParams, TokenEvent
from dynasparse_worker.server.engine_loop import EngineLoop, StepProfile

log = logging.getLogger(__name__)

GIL_SWITCH_INTERVAL_S = 0.0002  # how soon a waiting thread may take the GIL from a running one


def apply_command(engine: Any, kind: str, payload: Any) -> list[TokenEvent]:
    """Apply an "add" ((request id, prompt ids, params)) or a "cancel" (request id); returns the
    error event of an add the engine refused (one bad request must not stop the engine)."""
    try:
        if kind == "add":
            engine.add_request(*payload)
        else:
            engine.cancel(payload)
    except Exception as exc:  # noqa: BLE001 - the request fails, the engine goes on
        log.warning("engine refused %s: %s", kind, exc)
        if kind == "add":
            return [TokenEvent(payload[0], [], "", True, f"error: {exc}")]
    return []


def drive_step(engine: Any, open_ids: Callable[[], list[str]]) -> list[TokenEvent]:
    """One engine step; if it raises (the engine isolates sequences, so this is a last resort),
    every open request is cancelled and ends with an error event."""
    try:
        return engine.step()
    except Exception as exc:  # noqa: BLE001
        log.exception("engine step failed")
        ids = open_ids()
        for rid in ids:
            try:
                engine.cancel(rid)
            except Exception:  # noqa: BLE001
                pass
        return [TokenEvent(rid, [], "", True, f"error: {exc}") for rid in ids]


class ThreadStage:
    """The engine on a thread of this process; the supervisor applies budgets on that thread."""

    def __init__(self, engine: Any, supervisor: Supervisor, idle_tick_s: float = 0.05):
        self.engine = engine
        self.supervisor = supervisor
        self.num_slots = max(1, int(engine.runner.cache.num_slots))
        self.idle_tick_s = idle_tick_s
        self._lock = threading.Lock()
        self._inbox: deque[tuple[str, Any]] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def stop_ids(self, params: SamplingParams) -> frozenset[int]:
        return self.engine.stop_ids(params)

    def start(self, host: EngineLoop) -> None:
        # The engine thread gives the GIL up in every torch call (and while the device runs a
        # step) and needs it back at once; at the default 5 ms switch interval a busy output or
        # event-loop thread could keep it for a whole step.
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        self.supervisor.bind_engine_thread(self._wake.set)
        self._thread = threading.Thread(target=self._run, args=(host,), name="engine", daemon=True)
        self._thread.start()

    def add(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        self._post("add", (request_id, prompt_token_ids, params))

    def cancel(self, request_id: str) -> None:
        self._post("cancel", request_id)

    def _post(self, kind: str, payload: Any) -> None:
        with self._lock:
            self._inbox.append((kind, payload))
        self._wake.set()

    def stop(self, timeout: float) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def _run(self, host: EngineLoop) -> None:
        profile = StepProfile(host.host_cpu)
        try:
            while not self._stop.is_set():
                began = time.perf_counter()
                self._drain_inbox(host)
                host.on_step(self.engine.stats())  # the fast loop sees a spike before the step
                if self.engine.has_work():
                    stepped = time.perf_counter()
                    events = drive_step(self.engine, host.open_ids)
                    ended = time.perf_counter()
                    host.step_done(events)
                    profile.add(stepped - began, ended - stepped, len(events), ended)
                else:
                    self._wake.wait(self.idle_tick_s)
                    self._wake.clear()
        except BaseException:  # noqa: BLE001 - the thread ends; /healthz and the streams say so
            log.exception("the engine thread stopped")
            host.engine_died()

    def _drain_inbox(self, host: EngineLoop) -> None:
        while True:
            with self._lock:
                if not self._inbox:
                    return
                kind, payload = self._inbox.popleft()
            refused = apply_command(self.engine, kind, payload)
            if refused:
                host.step_done(refused)
