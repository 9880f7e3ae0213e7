"""The worker's budget state machine for operator updates: target, bounds, mode, (epoch, sequence).

Pure: `apply_update(state, update)` returns the next state and whether the update was applied.
An update is applied only if its (epoch, sequence) pair is greater than the last applied pair, so
the operator may resend freely. Bounds are sanitised so the quality floor is never crossed: every
budget this module hands out lies in [floor, ceiling] and floor >= the calibration's min_budget.

One message must never lock the worker out of its operator, so `rejection` refuses an update whose
(epoch, sequence) no honest operator can send (an epoch more than a day ahead of this worker's
wall clock: once applied it would make every later update look stale), and every number an update
carries is clamped into a range that keeps the worker responsive (a report interval of a
nanosecond would flood the stream; a NaN bound would disable the quality floor).
Called by control/service.py (the gRPC Session) and control/supervisor.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from dynasparse_proto.contract import Command, Mode
from dynasparse_proto.limits import (
    MAX_DRAIN_GRACE_S, MAX_SEQUENCE, REPORT_INTERVAL_RANGE_S, clipped, epoch_too_far_ahead,
)

__all__ = ["ControlState", "apply_update", "initial_state", "is_newer",
           "rejection", "start_drain"]


@dataclass(frozen=True)
class ControlState:
    """What the operator last told this worker (or the defaults before it said anything)."""

    target: float = 1.0  # the budget the operator wants (the fast loop may go lower)
    floor: float = 0.0  # the quality floor: no budget below it, ever
    ceiling: float = 1.0
    mode: Mode = Mode.NORMAL
    epoch: int = 0
    sequence: int = 0
    reason: str = ""
    sender: str = ""
    report_interval_s: float = 0.0  # 0: the worker's configured default
    drain_grace_s: float = 0.0  # 0: the worker's configured default
    ttft_p95_ms: float = 0.0  # the TTFT SLO late first tokens are counted against; 0: none

    def clamp(self, budget: float) -> float:
        """`budget` moved into [floor, ceiling]."""
        return min(self.ceiling, max(self.floor, budget))


def initial_state(min_budget: float, budget: float = 1.0) -> ControlState:
    """Before any operator update: bounds [min_budget, 1], target `budget` clamped into them."""
    floor = _valid_budget(min_budget, 0.0)
    state = ControlState(target=1.0, floor=floor, ceiling=1.0)
    return replace(state, target=state.clamp(_valid_budget(budget, 1.0)))


def is_newer(update: Command, state: ControlState) -> bool:
    """True iff the update's (epoch, sequence) is greater than the last applied pair."""
    return (update.epoch, update.sequence) > (state.epoch, state.sequence)


def rejection(update: Command, now_unix_ms: int) -> str:
    """Why `update` must not be applied at all ("" when it may): an (epoch, sequence) pair that
    would make every honest operator's later updates look stale."""
    if epoch_too_far_ahead(update.epoch, now_unix_ms):
        return (f"refused a control message with epoch {update.epoch}: more than a day ahead of "
                f"this worker's clock ({now_unix_ms} ms); check the sender's clock")
    if update.sequence >= MAX_SEQUENCE:
        return f"refused a control message with sequence {update.sequence} (at most {MAX_SEQUENCE})"
    return ""


def apply_update(state: ControlState, update: Command, min_budget: float,
                 now_unix_ms: int | None = None) -> tuple[ControlState, bool]:
    """Return (next state, applied). Stale or duplicate updates leave the state as it was, and so
    does one `rejection` refuses when `now_unix_ms` (this worker's wall clock) is given."""
    if not is_newer(update, state):
        return state, False
    if now_unix_ms is not None and rejection(update, now_unix_ms):
        return state, False
    floor = max(_valid_budget(min_budget, 0.0), _valid_budget(update.floor, state.floor))
    ceiling = _valid_budget(update.ceiling, state.ceiling)
    ceiling = max(ceiling, floor)  # an inverted pair keeps the floor: quality wins over speed
    target = _valid_budget(update.target_budget, state.target)
    nxt = replace(
        state,
        floor=floor,
        ceiling=ceiling,
        target=min(ceiling, max(floor, target)),
        mode=update.mode if state.mode is Mode.NORMAL else Mode.DRAIN,  # drain is one-way
        epoch=update.epoch,
        sequence=update.sequence,
        reason=clipped(update.reason),
        sender=clipped(update.sender),
        report_interval_s=_clamped(update.report_interval_s, *REPORT_INTERVAL_RANGE_S,
                                   unset=state.report_interval_s),
        drain_grace_s=_clamped(update.drain_grace_s, 0.0, MAX_DRAIN_GRACE_S,
                               unset=state.drain_grace_s),
        ttft_p95_ms=_clamped(update.ttft_p95_ms, 0.0, math.inf, unset=0.0),
    )
    return nxt, True


def start_drain(state: ControlState) -> ControlState:
    """Drain requested locally (SIGTERM): same effect as an operator drain, without a new pair."""
    return replace(state, mode=Mode.DRAIN)


def _valid_budget(value: float, fallback: float) -> float:
    """`value` if it is a budget in (0, 1], 1 if finite and above, else `fallback` (0, negative,
    NaN and infinity count as unset)."""
    if not math.isfinite(value) or value <= 0.0:
        return fallback
    return min(1.0, float(value))


def _clamped(value: float, low: float, high: float, *, unset: float) -> float:
    """`value` moved into [low, high]; `unset` for 0 (proto3's "not given"), negatives and
    non-finite values (an infinite SLO or interval is no target a worker can act on)."""
    if not math.isfinite(value) or value <= 0.0:
        return unset
    return min(high, max(low, float(value)))
