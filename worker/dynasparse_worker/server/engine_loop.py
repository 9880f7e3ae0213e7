"""Adapts the synchronous `Engine` to asyncio, with one hand-off per step.

Three stages, so the engine's thread does nothing but engine work between two device steps:
* the HTTP handlers (server/app.py) call `submit` (admission sized from the KV slots: at most
  `max_queue` requests waiting for a slot, else 429; none while draining) and read `TokenEvent`s
  from the handle's `EventQueue`; `release` cancels a sequence whose client went away;
* the engine stage alone calls `add_request`, `cancel`, `step` and `stats`; the supervisor's
  fast-loop hook (`on_step`) runs once per step, so a budget change lands before the next step.
  The stage is a thread of this process (server/engine_stage.py) or a child process of its own
  (server/engine_process.py, so the engine's thread never waits for this process's interpreter
  lock); either way each step's token ids come, as one list, to
* the output thread, which detokenizes every request of the step in one batch, applies stop
  strings (a hit cancels the sequence), records latencies, and hands the whole step to the event
  loop with ONE `call_soon_threadsafe`. A client that reads slower than the engine writes gets the
  tokens coalesced into one event (`EventQueue`).

Admission, handles, queue depth and delivery have one implementation here, whatever the stage.
Queue depth has one definition (`queue_depth`): admitted requests beyond the KV slots. The 429
admission, the metrics and the control reports all read it. Created by server/runtime.py.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Protocol

from dynasparse_worker.control.supervisor import Supervisor
from dynasparse_worker.engine.detokenizer import Detokenizer, TextState, Update
from dynasparse_worker.engine.types import EngineStats, SamplingParams, TokenEvent
from dynasparse_worker.server.metrics import WorkerMetrics

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """As many requests wait for a KV slot as the queue holds; the caller answers 429."""


class NotAdmitting(Exception):
    """Draining or stopped; the caller answers 503 with the reason."""


class EventQueue:
    """A single-consumer asyncio queue of one request's events that merges what piled up: `get`
    returns every pending event as one (tokens and text joined, the last one's finish)."""

    def __init__(self) -> None:
        self._items: deque[TokenEvent] = deque()
        self._waiter: asyncio.Future | None = None

    def put_nowait(self, ev: TokenEvent) -> None:
        self._items.append(ev)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    async def get(self) -> TokenEvent:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if len(self._items) == 1:
            return self._items.popleft()
        pending = list(self._items)
        self._items.clear()
        last = pending[-1]
        return replace(last, token_ids=[t for ev in pending for t in ev.token_ids],
                       text="".join(ev.text for ev in pending))


class EngineStage(Protocol):
    """Where the engine runs: a thread of this process (server/engine_stage.py) or a child process
    (server/engine_process.py). `add` and `cancel` are called in order under the loop's lock and
    must not block; the stage calls back the loop's `on_step`, `step_done`, `open_ids` and
    `engine_died`."""

    num_slots: int

    def stop_ids(self, params: SamplingParams) -> frozenset[int]: ...

    def start(self, host: EngineLoop) -> None: ...

    def add(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None: ...

    def cancel(self, request_id: str) -> None: ...

    def stop(self, timeout: float) -> None: ...

    @property
    def alive(self) -> bool: ...


@dataclass
class RequestHandle:
    request_id: str
    prompt_tokens: int
    events: EventQueue
    admitted_at: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    last_token_at: float | None = None
    finished: bool = False
    text: TextState | None = None  # detokenization progress (output thread only)


class EngineLoop:
    def __init__(self, stage: EngineStage, supervisor: Supervisor, metrics: WorkerMetrics, *,
                 tokenizer: Any = None, max_queue: int | None = None):
        """`stage`: where the engine runs (`ThreadStage` in this process, `ProcessStage` in a
        child); `tokenizer`: for detokenization and stop strings (none: events carry no text).
        `max_queue`: requests that may wait for a KV slot (default: as many as there are slots,
        so an admitted request waits at most about one generation before it starts)."""
        self.stage = stage
        self.supervisor = supervisor
        self.metrics = metrics
        self.num_slots = max(1, int(stage.num_slots))
        self.max_queue = max_queue if max_queue is not None else self.num_slots
        self.detokenizer = Detokenizer(tokenizer) if tokenizer is not None else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()  # one list of events per step
        self._stop = threading.Event()
        self._handles: dict[str, RequestHandle] = {}
        self._open = 0  # admitted handles without their final event
        self._ids = itertools.count()
        self._output: threading.Thread | None = None
        self._empty = asyncio.Event()
        self._empty.set()
        self.host_cpu = HostCpu()  # CPU seconds of the three stages, for the step profile
        self._clock: asyncio.Future | None = None

    @property
    def engine(self) -> Any:
        """The engine object when it runs in this process (None when it runs in a child)."""
        return getattr(self.stage, "engine", None)

    # ---- asyncio side ----------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.call_soon_threadsafe(lambda: setattr(self, "_clock", asyncio.ensure_future(
            self._clock_event_loop())))
        self._output = threading.Thread(target=self._run_output, name="engine-output", daemon=True)
        self._output.start()
        self.stage.start(self)

    async def _clock_event_loop(self) -> None:
        """Publish the event-loop thread's CPU time (HTTP, SSE) every `HostCpu.TICK_S`."""
        while not self._stop.is_set():
            self.host_cpu.event_loop_s = time.thread_time()
            await asyncio.sleep(HostCpu.TICK_S)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._clock is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._clock.cancel)
        self.stage.stop(timeout)
        self._outbox.put(None)
        if self._output is not None:
            self._output.join(timeout)

    @property
    def alive(self) -> bool:
        """The engine runs (False before start, after stop, or if its thread or process died)."""
        return self.stage.alive and not self._stop.is_set()

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._handles)

    @property
    def queue_depth(self) -> int:
        """Admitted requests beyond what the KV slots hold (the one queue depth of this worker).
        Every slot can take any admissible request (the cache reserves `max_seq_len` tokens per
        slot), so these are exactly the requests that wait for a slot."""
        with self._lock:
            return self._depth()

    def _depth(self) -> int:
        return max(0, self._open - self.num_slots)

    def submit(self, prompt_token_ids: list[int], params: SamplingParams) -> RequestHandle:
        """Admit a request or raise QueueFull / NotAdmitting. Call from the event loop thread."""
        if self._stop.is_set() or not self.supervisor.admitting:
            raise NotAdmitting("draining: not admitting new requests")
        with self._lock:
            depth = self._depth()
            if depth >= self.max_queue:
                raise QueueFull(f"{depth} requests already wait for one of the KV slots")
            rid = f"req-{next(self._ids)}"
            handle = RequestHandle(rid, len(prompt_token_ids), EventQueue())
            if self.detokenizer is not None:
                handle.text = TextState(params.stop_strings, self.stage.stop_ids(params))
            self._handles[rid] = handle
            self._open += 1
            self.stage.add(rid, list(prompt_token_ids), params)  # in order with the cancels
            self._empty.clear()
        self.metrics.prompt_tokens.inc(len(prompt_token_ids))
        return handle

    def release(self, handle: RequestHandle) -> None:
        """The handler is done with `handle`; cancels the sequence if it has not finished."""
        with self._lock:
            known = self._handles.pop(handle.request_id, None) is not None
            if known and not handle.finished:
                handle.finished = True
                self._open -= 1
                self.stage.cancel(handle.request_id)
            if not self._handles:
                self._empty.set()

    def fail_all(self, message: str) -> int:
        """End every unfinished request with an error event (the drain grace ran out, the engine
        died); returns how many. Call from the event loop thread."""
        failed = []
        with self._lock:
            for handle in self._handles.values():
                if not handle.finished:
                    handle.finished = True
                    self._open -= 1
                    self.stage.cancel(handle.request_id)
                    failed.append(handle)
        for handle in failed:
            handle.events.put_nowait(TokenEvent(handle.request_id, [], "", True, f"error: {message}"))
        return len(failed)

    async def wait_empty(self, timeout: float | None) -> bool:
        """True once no request is in flight, False if `timeout` passed first."""
        try:
            await asyncio.wait_for(self._empty.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    # ---- called by the engine stage --------------------------------------------------------------
    def on_step(self, stats: EngineStats) -> None:
        """Before each engine step: the supervisor's fast loop sees the worker's queue depth."""
        self.supervisor.on_step(replace(stats, queue_depth=self.queue_depth))

    def open_ids(self) -> list[str]:
        with self._lock:
            return list(self._handles)

    def step_done(self, events: list[TokenEvent]) -> None:
        """One step's events, handed to the output thread."""
        self._outbox.put(events)

    def engine_died(self) -> None:
        self._outbox.put("died")

    # ---- output thread ---------------------------------------------------------------------------
    def _run_output(self) -> None:
        while True:
            events = self._outbox.get()
            if events is None:
                return
            if events == "died":
                self._loop_call(self._fail_after_death)
                return
            began = time.thread_time()
            try:
                self._deliver(events)
            except Exception:  # noqa: BLE001 - keep delivering the next steps
                log.exception("delivering a step's events failed")
            self.host_cpu.output_s += time.thread_time() - began

    def _fail_after_death(self) -> None:
        self.fail_all("the engine stopped: retry on another replica")

    def _loop_call(self, fn, *args) -> None:
        if self._loop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # the loop closed meanwhile: nobody is listening any more
                pass

    def _deliver(self, events: list[TokenEvent]) -> None:
        live: list[tuple[RequestHandle, TokenEvent]] = []
        with self._lock:
            for ev in events:
                handle = self._handles.get(ev.request_id)
                if handle is not None and not handle.finished:
                    live.append((handle, ev))
        if self.detokenizer is not None:
            updates = [Update(h.text, ev.token_ids, ev.finished) for h, ev in live]
            for (handle, ev), text in zip(live, self.detokenizer.step(updates)):
                ev.text = text
                if handle.text.stopped and not ev.finished:
                    ev.finished, ev.finish_reason = True, "stop"
        now = time.monotonic()
        with self._lock:
            for handle, ev in live:
                if ev.finished:
                    handle.finished = True
                    self._open -= 1
                    if ev.finish_reason == "stop" and handle.text is not None and handle.text.stopped:
                        self.stage.cancel(handle.request_id)  # a stop string: the engine stops too
        for handle, ev in live:
            self._observe(handle, ev, now)
        if live:
            self._loop_call(_put_all, live)

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


@dataclass
class HostCpu:
    """CPU seconds spent so far by the engine loop's other two stages, each written by its own
    thread: the output thread adds after every step it delivers, the event loop publishes its
    thread's total every `TICK_S`."""

    TICK_S = 1.0
    output_s: float = 0.0
    event_loop_s: float = 0.0


class StepProfile:
    """Where the engine thread's time goes while busy, logged every `every_s` seconds: the step
    itself (schedule, run with its one device sync, postprocess), the host work between steps
    (admissions, cancellations, the fast loop), and the CPU each stage spends per token (engine
    thread, output thread, event loop): the three share one interpreter lock, so their sum per
    token bounds what one worker process can serve."""

    def __init__(self, host: HostCpu | None = None, every_s: float = 5.0,
                 engine_cpu: Callable[[], float] = time.thread_time):
        """`engine_cpu`: the engine thread's CPU seconds so far (default: the calling thread's, for
        a profile kept on the engine thread itself; a child process's engine reports its own)."""
        self.every_s = every_s
        self.host = host or HostCpu()
        self.engine_cpu = engine_cpu
        self._reset(time.perf_counter())

    def _reset(self, now: float) -> None:
        self.since, self.steps, self.step_s, self.between_s, self.events = now, 0, 0.0, 0.0, 0
        self.cpu = (self.engine_cpu(), self.host.output_s, self.host.event_loop_s)

    def cpu_us_per_token(self) -> tuple[float, float, float]:
        """(engine, output, event loop) CPU microseconds per token since the last log."""
        now = (self.engine_cpu(), self.host.output_s, self.host.event_loop_s)
        per = 1e6 / max(1, self.events)
        return tuple(max(0.0, (b - a) * per) for a, b in zip(self.cpu, now))  # type: ignore[return-value]

    def add(self, between_s: float, step_s: float, events: int, now: float) -> None:
        self.steps += 1
        self.step_s += step_s
        self.between_s += between_s
        self.events += events
        if now - self.since >= self.every_s:
            n = self.steps
            engine, output, loop = self.cpu_us_per_token()
            log.info("engine loop: %d steps in %.1f s, step %.2f ms, between steps %.3f ms, "
                     "%.1f events per step, host CPU per token: engine %.0f us, output %.0f us, "
                     "event loop %.0f us", n, now - self.since, 1000 * self.step_s / n,
                     1000 * self.between_s / n, self.events / n, engine, output, loop)
            self._reset(now)


def _put_all(ready: list[tuple[RequestHandle, TokenEvent]]) -> None:
    for handle, ev in ready:
        handle.events.put_nowait(ev)
