"""Limits on the numbers a ControlMessage or a Report may carry, shared by both ends of the stream.

The worker refuses or clamps a command outside them (a stuck epoch or a flooding report interval
would lock its operator out); the operator applies the same epoch rule to the epochs workers
report, so it never adopts one that no worker would accept.
"""

from __future__ import annotations

REPORT_INTERVAL_RANGE_S = (0.1, 60.0)
"""Report intervals a command may ask for; values outside are clamped into the range."""
MAX_DRAIN_GRACE_S = 3600.0
MAX_EPOCH_AHEAD_MS = 24 * 3600 * 1000
"""Operators stamp epochs with wall-clock milliseconds: one further ahead of the receiver's clock
than this is refused."""
MAX_SEQUENCE = 2**53
"""Operators count sequences up from 1 within an epoch; no honest one reaches this."""
MAX_TEXT = 1024
"""Characters kept of a free-text field (a reason, a sender, a warning): the worker echoes reasons
in every report, so an unbounded one would multiply into every later message."""
MAX_WARNINGS = 4
"""Warnings a report carries (and the operator reads) at most."""


def clipped(text: str) -> str:
    """`text` cut to MAX_TEXT characters, marked when cut."""
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT - 1] + "…"


def epoch_too_far_ahead(epoch: int, now_unix_ms: int) -> bool:
    """True when `epoch` lies more than MAX_EPOCH_AHEAD_MS beyond `now_unix_ms`."""
    return epoch > now_unix_ms + MAX_EPOCH_AHEAD_MS
