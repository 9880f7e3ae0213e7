"""The in-pod fast loop: a pure decision function from load signals and bounds to a budget.

Called between engine steps by control/supervisor.py (through the engine loop's step hook), so a
queue or memory spike tightens the budget within one step. Rules, all inside the operator's bounds:

* pressure = max(queue depth / queue_high, memory fraction / memory_high, KV usage / kv_high);
  pressure >= 1 tightens by `tighten_step × min(pressure, max_pressure)` at once, again when pressure
  rises by a quarter, and every `tighten_cooldown_s` while it lasts; memory above
  `memory_critical` goes straight to the floor;
* pressure clear (every signal under its *low* mark: hysteresis) for `relax_hold_s` relaxes by
  `relax_step` per hold period, back up to the operator's target, never beyond;
* drain moves to the floor. A lost operator stream changes nothing: the worker keeps its last
  bounds and target (they were chosen for the load the operator last saw, and the fast loop still
  tightens within them on pressure), so an operator restart or an expired certificate never
  costs quality.

No I/O, no clocks: `now` comes in as an argument (monotonic seconds).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from dynasparse_proto.contract import Mode
from dynasparse_worker.control.bounds import ControlState


@dataclass(frozen=True)
class FastLoopConfig:
    """Thresholds of the fast loop; each has a low mark for hysteresis."""

    queue_high: int = 8
    """Waiting requests at which the loop tightens."""
    queue_low: int = 2
    """Waiting requests at or under which queue pressure counts as cleared."""
    memory_high: float = 0.90
    """Fraction of GPU (or fallback) memory in use at which the loop tightens."""
    memory_low: float = 0.80
    memory_critical: float = 0.97
    """Above this, go to the floor at once."""
    kv_high: float = 0.90
    """Fraction of the KV cache in use at which the loop tightens."""
    kv_low: float = 0.75
    tighten_step: float = 0.10
    """Budget removed per unit of pressure in one tightening."""
    max_pressure: float = 3.0
    """Pressure is capped here when sizing a step."""
    tighten_cooldown_s: float = 0.5
    """While pressure lasts without rising, tighten again at most this often."""
    relax_step: float = 0.05
    relax_hold_s: float = 2.0
    """Pressure must stay clear this long before each relaxing step."""


@dataclass(frozen=True)
class Signals:
    """One observation, taken between two engine steps."""

    now: float  # monotonic seconds
    queue_depth: int = 0
    running: int = 0
    kv_usage: float = 0.0
    memory_used_bytes: int = 0
    memory_total_bytes: int = 0


@dataclass(frozen=True)
class LoopState:
    """The loop's memory between calls."""

    budget: float
    last_pressure: float = 0.0
    last_tighten_at: float | None = None
    clear_since: float | None = None
    last_relax_at: float | None = None


@dataclass(frozen=True)
class Decision:
    """A budget change and why; `source` is "fast-loop", "drain" or "operator"."""

    from_budget: float
    to_budget: float
    reason: str
    source: str


def memory_fraction(s: Signals) -> float:
    return s.memory_used_bytes / s.memory_total_bytes if s.memory_total_bytes > 0 else 0.0


def pressure_of(s: Signals, cfg: FastLoopConfig) -> tuple[float, str]:
    """(pressure, human-readable cause of the largest term)."""
    mem = memory_fraction(s)
    terms = [
        (s.queue_depth / max(cfg.queue_high, 1), f"queue depth {s.queue_depth} >= {cfg.queue_high}"),
        (mem / cfg.memory_high, f"memory {mem:.0%} >= {cfg.memory_high:.0%}"),
        (s.kv_usage / cfg.kv_high, f"KV usage {s.kv_usage:.0%} >= {cfg.kv_high:.0%}"),
    ]
    return max(terms, key=lambda t: t[0])


def is_clear(s: Signals, cfg: FastLoopConfig) -> bool:
    return (s.queue_depth <= cfg.queue_low and memory_fraction(s) < cfg.memory_low
            and s.kv_usage < cfg.kv_low)


def follow_operator(loop: LoopState, control: ControlState) -> tuple[LoopState, Decision | None]:
    """An operator update was applied: jump to its target (the loop may tighten again next step)."""
    target = control.clamp(control.target) if control.mode is Mode.NORMAL else control.floor
    fresh = LoopState(budget=target)
    if abs(target - loop.budget) < 1e-9:
        return fresh, None
    reason = control.reason or "operator update"
    return fresh, Decision(loop.budget, target, f"{reason} (from {control.sender or 'operator'})",
                           "operator")


def decide(s: Signals, control: ControlState, loop: LoopState, cfg: FastLoopConfig
           ) -> tuple[LoopState, Decision | None]:
    """The next loop state and the budget change to apply now, if any."""
    bounds = f"(bounds {control.floor:.2f}..{control.ceiling:.2f})"
    before = loop.budget

    def change(to: float, why: str, source: str, **updates) -> tuple[LoopState, Decision | None]:
        to = control.clamp(to)
        nxt = replace(loop, budget=to, **updates)
        if abs(to - before) < 1e-9:
            return nxt, None
        return nxt, Decision(before, to, f"{why}: budget {before:.2f} -> {to:.2f} {bounds}", source)

    if control.mode is Mode.DRAIN:
        return change(control.floor, "draining", "drain")

    goal = control.clamp(control.target)
    if before > goal + 1e-9 or before < control.floor - 1e-9:
        return change(goal, "outside the operator's bounds", "fast-loop")

    pressure, cause = pressure_of(s, cfg)
    if pressure >= 1.0:
        if memory_fraction(s) >= cfg.memory_critical:
            return change(control.floor, f"memory {memory_fraction(s):.0%} >= "
                          f"{cfg.memory_critical:.0%}", "fast-loop",
                          last_pressure=pressure, last_tighten_at=s.now, clear_since=None)
        rising = pressure >= loop.last_pressure * 1.25
        cooled = loop.last_tighten_at is None or s.now - loop.last_tighten_at >= cfg.tighten_cooldown_s
        if not (rising or cooled):
            return replace(loop, clear_since=None), None
        step = cfg.tighten_step * min(pressure, cfg.max_pressure)
        return change(before - step, cause, "fast-loop",
                      last_pressure=pressure, last_tighten_at=s.now, clear_since=None)

    if not is_clear(s, cfg):  # between the low and high marks: hold
        return replace(loop, clear_since=None, last_pressure=pressure), None
    clear_since = loop.clear_since if loop.clear_since is not None else s.now
    last_move = max(clear_since, loop.last_relax_at or clear_since)
    if before >= goal - 1e-9 or s.now - last_move < cfg.relax_hold_s:
        return replace(loop, clear_since=clear_since, last_pressure=pressure), None
    return change(min(goal, before + cfg.relax_step),
                  f"pressure cleared for {s.now - clear_since:.1f} s", "fast-loop",
                  clear_since=clear_since, last_relax_at=s.now, last_pressure=0.0)
