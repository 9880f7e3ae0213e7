"""Monotonic control epochs: each (re)started control loop stamps its commands with an epoch greater
than any it or an earlier operator process sent, whatever the wall clock says.

Workers apply an update only if its (epoch, sequence) pair is greater than the last one they
applied, so an epoch lower than the last applied one would be ignored for good. The wall clock alone
cannot promise that (it can step back, and two operator processes' clocks differ), so the epoch is
derived from state that outlives the process: the epoch persisted in the model's status, and the
epochs the workers report having applied. Pure; daemon.py persists and applies the result.
"""

from __future__ import annotations

from typing import Any, Mapping

from dynasparse_proto.limits import epoch_too_far_ahead


def persisted_epoch(status: Mapping[str, Any] | None) -> int:
    """The epoch the status says was last used (0 when missing or unreadable)."""
    value = (status or {}).get("epoch")
    try:
        epoch = int(value or 0)
    except (TypeError, ValueError):
        return 0
    return max(0, epoch)


def starting_epoch(status: Mapping[str, Any] | None, wall_clock_ms: int) -> int:
    """The epoch for a control loop that starts now: max(wall clock, last persisted + 1)."""
    return max(int(wall_clock_ms), persisted_epoch(status) + 1)


def overtaken(current: int, applied_by_worker: int, now_unix_ms: int) -> int | None:
    """A new epoch when a worker has applied one beyond `current` that an honest operator
    may have sent (not beyond the limit workers enforce), else None."""
    if applied_by_worker <= current or epoch_too_far_ahead(applied_by_worker, now_unix_ms):
        return None
    return applied_by_worker + 1
