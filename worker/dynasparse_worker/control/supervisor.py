"""The worker's control hub: operator state, the fast loop, the applied budget, report snapshots.

One `Supervisor` per worker process, shared by three callers on two threads:
* the engine thread calls `on_step(stats)` between engine steps (the fast loop runs here, so a
  spike tightens the budget within one step) and records latency samples;
* the gRPC service (asyncio thread) calls `apply_update`, `stream_opened/closed` and `snapshot`;
* the HTTP app reads `ready`/`draining` and counts requests.
A lock guards the state; the budget itself is applied through a `BudgetActuator` (the engine
actuators in server/actuators.py), which write it into the model's device tensors, in this
process or, for an engine in a child process, by a command the child confirms (`record_applied`).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Protocol

from dynasparse_proto.contract import Command, LoadSignals, Mode
from dynasparse_proto.limits import MAX_WARNINGS, REPORT_INTERVAL_RANGE_S, clipped
from dynasparse_proto.quality import budget_for_loss, valid_curve
from dynasparse_proto.speed import speedup_at, valid_speed_curve
from dynasparse_worker.control import bounds as B
from dynasparse_worker.control.fast_loop import (
    Decision, FastLoopConfig, LoopState, Signals, decide, follow_operator,
)
from dynasparse_worker.control.load import LoadTracker
from dynasparse_worker.control.memory import MemoryProbe, MemoryReading
from dynasparse_worker.control.window import LatencyWindows, Summary
from dynasparse_worker.engine.types import EngineStats

log = logging.getLogger(__name__)
WARNING_TTL_S = 60.0
"""How long a warning (a refused control message) is repeated in reports."""


class BudgetActuator(Protocol):
    """What the supervisor needs from the model side."""

    def set_budget(self, budget: float) -> float:
        """Apply `budget`; return the expected quality loss at it."""

    def min_budget(self) -> float:
        """The sparsest budget calibration offers."""

    def quality_curve(self) -> list[tuple[float, float]]:
        """(budget, expected loss) points, ascending budget."""

    # Optional: `speed_curve() -> list[tuple[float, float]]`, (budget, decode speed-up over dense)
    # as measured on this device; without it the worker reports none and the operator assumes a
    # cut buys no speed.


@dataclass(frozen=True)
class TimedDecision:
    decision: Decision
    at_unix_ms: int


@dataclass(frozen=True)
class Snapshot:
    """Everything a Report carries, as plain data (control/service.py turns it into protobuf)."""

    pod_name: str
    model: str
    sent_at_unix_ms: int
    ttft: Summary
    inter_token: Summary
    queue_depth: int
    running: int
    tokens_per_s: float
    applied_budget: float
    expected_loss: float
    control: B.ControlState
    ready: bool
    memory: MemoryReading
    kv_usage: float
    last_decision: TimedDecision | None
    min_budget: float
    quality_curve: list[tuple[float, float]] = field(default_factory=list)
    requests_total: int = 0
    requests_failed: int = 0
    warnings: tuple[str, ...] = ()
    load: LoadSignals = field(default_factory=LoadSignals)  # with the measured speed curve


def _measured_speed(actuator: BudgetActuator) -> tuple[tuple[float, float], ...]:
    """The actuator's measured speed curve (measured once at start-up), or none."""
    measured = getattr(actuator, "speed_curve", None)
    return valid_speed_curve(measured()) if measured is not None else ()


class Supervisor:
    def __init__(self, actuator: BudgetActuator, *, pod_name: str, model_name: str,
                 config: FastLoopConfig | None = None, memory: MemoryProbe | None = None,
                 initial_budget: float = 1.0, report_interval_s: float = 0.5,
                 drain_grace_s: float = 30.0, deregister_s: float = 0.0, window_s: float = 30.0,
                 quality_min_budget: float | None = None, quality_max_loss: float | None = None,
                 slots: int = 0, clock: Callable[[], float] = time.monotonic):
        """`deregister_s`: how long a draining worker, already reporting not-ready, still admits
        requests, so that clients routed here before the endpoints dropped this pod are served
        rather than refused (Kubernetes removes a pod from a Service only after its readiness probe
        fails and every proxy has caught up).

        `quality_min_budget` / `quality_max_loss`: the AdaptiveModel's quality bound, given at pod
        creation, so that the floor holds from the first request on, not only once the operator's
        first update arrives (see `lowest_budget`).

        `slots`: the decode batch's size (the most requests that run at once); 0 learns it as the
        most seen running."""
        self.quality_min_budget = quality_min_budget
        self.quality_max_loss = quality_max_loss
        self.actuator = actuator
        self.pod_name = pod_name
        self.model_name = model_name
        self.config = config or FastLoopConfig()
        self.memory = memory or MemoryProbe()
        self.default_report_interval_s = report_interval_s
        self.default_drain_grace_s = drain_grace_s
        self.deregister_s = deregister_s
        self._drain_started_at: float | None = None
        self.windows = LatencyWindows(window_s)
        self.load = LoadTracker(latency_s=window_s, slots=slots)
        self.clock = clock
        self._lock = threading.Lock()
        self._calibration_min = actuator.min_budget()
        self._min_budget = self.lowest_budget(actuator)
        self._speed = _measured_speed(actuator)
        self._control = B.initial_state(self._min_budget, initial_budget)
        self._loop = LoopState(budget=self._control.target)
        self._expected_loss = actuator.set_budget(self._loop.budget)
        self._last_decision: TimedDecision | None = None
        self._streams = 0
        self._stats = EngineStats()
        self._memory = self.memory.read()
        self._memory_at = clock()
        self.model_loaded = False
        self.requests_total = 0
        self.requests_failed = 0
        self._engine_owned = False  # once an engine thread runs, only it touches the actuator
        self._wake_engine: Callable[[], None] = lambda: None
        self._pending_budget: float | None = None
        self._applied = threading.Event()
        self._applied.set()
        self._warnings: collections.deque[tuple[float, str]] = collections.deque(maxlen=MAX_WARNINGS)
        self.drain_listeners: list[Callable[[float], None]] = []
        self.decision_listeners: list[Callable[[TimedDecision], None]] = []

    # ---- read side -------------------------------------------------------------------------------
    @property
    def budget(self) -> float:
        return self._loop.budget

    @property
    def expected_loss(self) -> float:
        return self._expected_loss

    @property
    def control(self) -> B.ControlState:
        return self._control

    @property
    def draining(self) -> bool:
        return self._control.mode is Mode.DRAIN

    @property
    def admitting(self) -> bool:
        """New requests are accepted: not draining, or draining but still inside the deregistration
        window (readiness already false)."""
        if not self.draining:
            return True
        started = self._drain_started_at
        return started is not None and self.clock() - started < self.deregister_s

    @property
    def ready(self) -> bool:
        return self.model_loaded and not self.draining

    @property
    def report_interval_s(self) -> float:
        """The operator's interval (already clamped), else the configured default, clamped too."""
        low, high = REPORT_INTERVAL_RANGE_S
        return self._control.report_interval_s or min(high, max(low, self.default_report_interval_s))

    @property
    def drain_grace_s(self) -> float:
        return self._control.drain_grace_s or self.default_drain_grace_s

    def attach(self, actuator: BudgetActuator) -> None:
        """Swap in the model's actuator once it is loaded; the floor rises to its min_budget."""
        with self._lock:
            self.actuator = actuator
            self._speed = _measured_speed(actuator)
            self._calibration_min = actuator.min_budget()
            self._min_budget = self.lowest_budget(actuator)
            floor = max(self._control.floor, self._min_budget)
            self._control = replace(self._control, floor=floor,
                                    ceiling=max(self._control.ceiling, floor))
            self._control = replace(self._control, target=self._control.clamp(self._control.target))
            self._loop = replace(self._loop, budget=self._control.clamp(self._loop.budget))
            self._set_budget(self._loop.budget)

    def lowest_budget(self, actuator: BudgetActuator) -> float:
        """The floor no update can lower: the calibration's minimum raised to the quality bound
        (an expected loss maps to a measured point of the curve, never between two; no curve
        that meets it means dense)."""
        floor = actuator.min_budget()
        if self.quality_min_budget is not None:
            floor = max(floor, self.quality_min_budget)
        if self.quality_max_loss is not None:
            curve = valid_curve(actuator.quality_curve())
            floor = max(floor, budget_for_loss(curve, self.quality_max_loss))
        return min(1.0, floor)

    def bind_engine_thread(self, wake: Callable[[], None]) -> None:
        """From now on budgets reach the actuator only from `on_step` (the engine thread), between
        steps, so a step never sees a half-written plan; `wake` nudges an idle engine loop."""
        with self._lock:
            self._engine_owned = True
            self._wake_engine = wake

    def wait_applied(self, timeout: float) -> bool:
        """Block until the engine thread has applied the latest budget (True) or `timeout` passes."""
        return self._applied.wait(timeout)

    # ---- operator side ---------------------------------------------------------------------------
    def apply_update(self, update: Command) -> bool:
        """Apply an operator update if newer than the last; a drain update starts the drain. An
        update `bounds.rejection` refuses is logged and named in the next reports' warnings."""
        now_ms = int(time.time() * 1000)
        with self._lock:
            was_draining = self.draining
            refused = B.is_newer(update, self._control) and B.rejection(update, now_ms)
            if refused:
                log.warning("%s (from %s)", refused, clipped(update.sender) or "an unnamed sender")
                self._warnings.append((self.clock(), refused))
                return False
            control, applied = B.apply_update(self._control, update, self._min_budget, now_ms)
            if not applied:
                return False
            self._control = control
            self._loop, decision = follow_operator(self._loop, control)
            self._apply(decision)
            newly_draining = self.draining and not was_draining
            if newly_draining:
                self._drain_started_at = self.clock()
        if newly_draining:
            self._notify_drain()
        return True

    def request_drain(self, reason: str = "SIGTERM") -> bool:
        """Local drain (SIGTERM). Returns False if already draining."""
        with self._lock:
            if self.draining:
                return False
            self._control = B.start_drain(self._control)
            self._drain_started_at = self.clock()
            self._loop, decision = follow_operator(self._loop, self._control)
            if decision is not None:
                decision = Decision(decision.from_budget, decision.to_budget,
                                    f"{reason}: draining at the floor {decision.to_budget:.2f}",
                                    "drain")
            self._apply(decision)
        self._notify_drain()
        return True

    def stream_opened(self) -> None:
        with self._lock:
            self._streams += 1

    def stream_closed(self) -> None:
        with self._lock:
            self._streams = max(0, self._streams - 1)

    # ---- engine side -----------------------------------------------------------------------------
    def on_step(self, stats: EngineStats) -> None:
        """Called by the engine thread between steps: run the fast loop, apply any change."""
        now = self.clock()
        with self._lock:
            self._flush_pending()
        if now - self._memory_at >= 0.05:
            self._memory, self._memory_at = self.memory.read(), now
        with self._lock:
            self._stats = stats
            signals = Signals(
                now=now, queue_depth=stats.queue_depth, running=stats.running,
                kv_usage=stats.kv_usage, memory_used_bytes=self._memory.used_bytes,
                memory_total_bytes=self._memory.total_bytes,
            )
            self._loop, decision = decide(signals, self._control, self._loop, self.config)
            self._apply(decision, on_engine_thread=True)
            self.load.on_step(now, stats.queue_depth, stats.running,
                              speedup_at(self._speed, self._loop.budget))

    def record_applied(self, expected_loss: float) -> None:
        """A deferred actuator's engine applied the latest budget, at this expected loss."""
        with self._lock:
            self._expected_loss = expected_loss
            self._applied.set()

    def record_first_token(self, ttft_s: float) -> None:
        with self._lock:
            now = self.clock()
            self.windows.ttft.add(now, ttft_s)
            self.load.on_first_token(now, ttft_s, self._control.ttft_p95_ms / 1000.0)

    def record_tokens(self, count: int, inter_token_s: float | None) -> None:
        with self._lock:
            now = self.clock()
            self.windows.tokens.add(now, float(count))
            if inter_token_s is not None and count > 0:
                self.windows.inter_token.add(now, inter_token_s / count)

    def count_request(self, ok: bool) -> None:
        with self._lock:
            self.requests_total += 1
            self.requests_failed += 0 if ok else 1
            self.load.on_finished(self.clock())

    # ---- reports ---------------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        now = self.clock()
        with self._lock:
            return Snapshot(
                pod_name=self.pod_name, model=self.model_name,
                sent_at_unix_ms=int(time.time() * 1000),
                ttft=self.windows.ttft.summary_ms(now),
                inter_token=self.windows.inter_token.summary_ms(now),
                queue_depth=self._stats.queue_depth, running=self._stats.running,
                tokens_per_s=self.windows.tokens.rate(now),
                applied_budget=self._loop.budget, expected_loss=self._expected_loss,
                control=self._control, ready=self.ready, memory=self._memory,
                kv_usage=self._stats.kv_usage, last_decision=self._last_decision,
                min_budget=self._calibration_min,
                quality_curve=list(self.actuator.quality_curve()),
                requests_total=self.requests_total, requests_failed=self.requests_failed,
                warnings=tuple(w for at, w in self._warnings if now - at < WARNING_TTL_S),
                load=replace(self.load.summary(now, self._control.ttft_p95_ms / 1000.0),
                             speed_curve=self._speed),
            )

    # ---- internals -------------------------------------------------------------------------------
    def _apply(self, decision: Decision | None, on_engine_thread: bool = False) -> None:
        """With the lock held: push a changed budget to the model (now, or at the engine thread's
        next `on_step`) and remember why."""
        if decision is None:
            return
        if self._engine_owned and not on_engine_thread:
            self._pending_budget = decision.to_budget
            self._applied.clear()
            self._wake_engine()
        else:
            self._pending_budget = None
            self._set_budget(decision.to_budget)
        if abs(decision.to_budget - decision.from_budget) >= 0.01:
            self.load.on_budget_changed(self.clock())
        timed = TimedDecision(decision, int(time.time() * 1000))
        self._last_decision = timed
        for listener in self.decision_listeners:
            listener(timed)

    def _flush_pending(self) -> None:
        if self._pending_budget is not None:
            self._set_budget(self._pending_budget)
            self._pending_budget = None

    def _set_budget(self, budget: float) -> None:
        """With the lock held: hand `budget` to the actuator; a deferred one (an engine in another
        process) counts as applied only once `record_applied` confirms it."""
        self._expected_loss = self.actuator.set_budget(budget)
        if getattr(self.actuator, "deferred", False):
            self._applied.clear()
        else:
            self._applied.set()

    def _notify_drain(self) -> None:
        for listener in self.drain_listeners:
            listener(self.drain_grace_s)
