"""Runs the synchronous `Engine` in one thread and adapts it to asyncio: one event queue per request.

The HTTP handlers (server/app.py) call `submit` (admission: bounded queue, no admission while
draining) and read `TokenEvent`s from the returned handle; `cancel` frees a sequence whose client went
away. The thread owns the engine: it alone calls `add_request`, `cancel`, `step` and `stats`. After
every step it records latencies and calls the supervisor's fast-loop hook (`on_step`), so a budget
change lands before the next step. Created by server/runtime.py.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from dynasparse_worker.control.supervisor import Supervisor
from dynasparse_worker.engine.types import EngineStats, SamplingParams, TokenEvent
from dynasparse_worker.server.metrics import WorkerMetrics

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The admission queue is full; the caller answers 429 with Retry-After."""


class NotAdmitting(Exception):
    """Draining or stopped; the caller answers 503 with the reason."""


@dataclass
class RequestHandle:
    request_id: str
    prompt_tokens: int
    events: asyncio.Queue
    admitted_at: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    last_token_at: float | None = None
    finished: bool = False


class EngineLoop:
    def __init__(self, engine: Any, supervisor: Supervisor, metrics: WorkerMetrics, *,
                 max_queue: int = 64, idle_tick_s: float = 0.05):
        self.engine = engine
        self.supervisor = supervisor
        self.metrics = metrics
        self.max_queue = max_queue
        self.idle_tick_s = idle_tick_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._inbox: deque[tuple[str, Any]] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._handles: dict[str, RequestHandle] = {}
        self._waiting: set[str] = set()  # admitted, no token yet
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._empty = asyncio.Event()
        self._empty.set()

    # ---- asyncio side ----------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.supervisor.bind_engine_thread(self._wake.set)
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._handles)

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    def submit(self, prompt_token_ids: list[int], params: SamplingParams) -> RequestHandle:
        """Admit a request or raise QueueFull / NotAdmitting. Call from the event loop thread."""
        if self._stop.is_set() or not self.supervisor.admitting:
            raise NotAdmitting("draining: not admitting new requests")
        with self._lock:
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests already waiting")
            rid = f"req-{next(self._ids)}"
            handle = RequestHandle(rid, len(prompt_token_ids), asyncio.Queue())
            self._handles[rid] = handle
            self._waiting.add(rid)
            self._inbox.append(("add", (rid, list(prompt_token_ids), params)))
            self._empty.clear()
        self.metrics.prompt_tokens.inc(len(prompt_token_ids))
        self._wake.set()
        return handle

    def release(self, handle: RequestHandle) -> None:
        """The handler is done with `handle`; cancels the sequence if it has not finished."""
        with self._lock:
            known = self._handles.pop(handle.request_id, None) is not None
            self._waiting.discard(handle.request_id)
            if known and not handle.finished:
                self._inbox.append(("cancel", handle.request_id))
            if not self._handles:
                self._empty.set()
        self._wake.set()

    async def wait_empty(self, timeout: float | None) -> bool:
        """True once no request is in flight, False if `timeout` passed first."""
        try:
            await asyncio.wait_for(self._empty.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    # ---- engine thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._drain_inbox()
            self.supervisor.on_step(self._stats())  # the fast loop sees a spike before the step
            if self.engine.has_work():
                self._step()
            else:
                self._wake.wait(self.idle_tick_s)
                self._wake.clear()

    def _drain_inbox(self) -> None:
        while True:
            with self._lock:
                if not self._inbox:
                    return
                kind, payload = self._inbox.popleft()
            try:
                if kind == "add":
                    self.engine.add_request(*payload)
                else:
                    self.engine.cancel(payload)
            except Exception as exc:  # noqa: BLE001 - one bad request must not stop the engine
                log.exception("engine rejected %s", kind)
                if kind == "add":
                    self._deliver([TokenEvent(payload[0], [], "", True, f"error: {exc}")])

    def _step(self) -> None:
        try:
            events = self.engine.step()
        except Exception as exc:  # noqa: BLE001 - fail what is in flight, keep serving
            log.exception("engine step failed")
            with self._lock:
                ids = list(self._handles)
            for rid in ids:
                try:
                    self.engine.cancel(rid)
                except Exception:  # noqa: BLE001
                    pass
            events = [TokenEvent(rid, [], "", True, f"error: {exc}") for rid in ids]
        self._deliver(events)

    def _stats(self) -> EngineStats:
        stats = self.engine.stats()
        with self._lock:
            pending_adds = sum(1 for kind, _ in self._inbox if kind == "add")
        if pending_adds:
            stats = EngineStats(**{**stats.__dict__, "queue_depth": stats.queue_depth + pending_adds})
        return stats

    def _deliver(self, events: list[TokenEvent]) -> None:
        now = time.monotonic()
        ready: list[tuple[RequestHandle, TokenEvent]] = []
        with self._lock:
            for ev in events:
                handle = self._handles.get(ev.request_id)
                if handle is None:
                    continue  # released (client gone) before this step finished
                self._waiting.discard(ev.request_id)
                handle.finished = handle.finished or ev.finished
                ready.append((handle, ev))
        for handle, ev in ready:
            self._observe(handle, ev, now)
        if ready and self._loop is not None:
            self._loop.call_soon_threadsafe(_put_all, ready)

    def _observe(self, handle: RequestHandle, ev: TokenEvent, now: float) -> None:
        n = len(ev.token_ids)
        if n:
            self.metrics.generated_tokens.inc(n)
            if handle.first_token_at is None:
                handle.first_token_at = now
                ttft = now - handle.admitted_at
                self.metrics.ttft.observe(ttft)
                self.supervisor.record_first_token(ttft)
                self.supervisor.record_tokens(n, None)
            else:
                gap = now - (handle.last_token_at or now)
                for _ in range(n):
                    self.metrics.inter_token.observe(gap / n)
                self.supervisor.record_tokens(n, gap)
            handle.last_token_at = now
        if ev.finished:
            self.metrics.e2e.observe(now - handle.admitted_at)


def _put_all(ready: list[tuple[RequestHandle, TokenEvent]]) -> None:
    for handle, ev in ready:
        handle.events.put_nowait(ev)
