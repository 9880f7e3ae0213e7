"""Sliding-window latency and throughput: p50/p95 of TTFT and inter-token latency, tokens/s.

Called by server/engine_loop.py (records samples as tokens come out) and control/supervisor.py
(summaries for reports). Not thread-safe by itself: its owner holds a lock. Times are monotonic
seconds passed in by the caller, so tests need no clock.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Summary:
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    count: int = 0


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in [0, 100]); 0 for an empty list."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class SlidingWindow:
    """Samples (time, value) younger than `window_s`, at most `max_samples` of them."""

    def __init__(self, window_s: float = 30.0, max_samples: int = 4096):
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque(maxlen=max_samples)

    def add(self, now: float, value: float) -> None:
        self._samples.append((now, value))

    def _expire(self, now: float) -> None:
        while self._samples and now - self._samples[0][0] > self.window_s:
            self._samples.popleft()

    def values(self, now: float) -> list[float]:
        self._expire(now)
        return [v for _, v in self._samples]

    def summary_ms(self, now: float) -> Summary:
        """p50/p95 of the window's values (seconds) in milliseconds."""
        values = sorted(self.values(now))
        return Summary(percentile(values, 50) * 1e3, percentile(values, 95) * 1e3, len(values))

    def rate(self, now: float) -> float:
        """Sum of values per second over the window (e.g. tokens/s when values are token counts)."""
        values = self._samples
        self._expire(now)
        if not values:
            return 0.0
        span = max(now - values[0][0], 1.0)  # at least one second, so one burst is not infinite
        return sum(v for _, v in values) / span


class LatencyWindows:
    """The three windows a report needs."""

    def __init__(self, window_s: float = 30.0):
        self.ttft = SlidingWindow(window_s)
        self.inter_token = SlidingWindow(window_s, max_samples=16384)
        self.tokens = SlidingWindow(window_s, max_samples=16384)
