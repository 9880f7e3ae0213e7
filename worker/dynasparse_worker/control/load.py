"""The worker's view of its offered load, the leading signals the operator's feed-forward needs.

Derived from what the engine loop already hands the supervisor, so no request path changes:
* arrivals: every request is waiting, running or counted done (`count_request`), so the growth of
  waiting + running plus the requests finished since is what arrived (rejections included: they
  are demand the pod could not take);
* the oldest waiting request: a FIFO of the moments the waiting count grew, trimmed as it shrinks;
* dense work per request: busy slot-time × the speed-up of the budget it ran at, per finished
  request (Little's law), so the operator can size capacity at any budget through the speed curve;
* late first tokens of requests that arrived since the applied budget last changed, plus such
  requests still waiting past the SLO: misses measured under the budget now applied, not under an
  older one (a backlog built before a cut is late however good the cut).

Pure: times are monotonic seconds passed in; the supervisor holds the lock.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from dynasparse_proto.contract import LoadSignals
from dynasparse_proto.load import LONG_WINDOW_S, SHORT_WINDOW_S

BUCKET_S = 0.25


@dataclass
class _Bucket:
    start: float
    arrivals: float = 0.0


class LoadTracker:
    """Arrival rates, queue age, work per request and late first tokens of one worker."""

    def __init__(self, *, short_s: float = SHORT_WINDOW_S, long_s: float = LONG_WINDOW_S,
                 latency_s: float = 30.0,
                 work_tau_s: float = 60.0, slots: int = 0, min_finished: float = 3.0):
        """`short_s`/`long_s`: the arrival-rate windows (the long one short enough that a ramp
        shows within seconds); `latency_s`: how far back late first tokens count;
        `work_tau_s`: the time constant of the work-per-request average (a workload property
        that changes slowly, so it is averaged longer than the rates)."""
        self.short_s, self.long_s, self.latency_s = short_s, long_s, latency_s
        self.work_tau_s = work_tau_s
        self.slots = slots  # 0: learnt as the most requests seen running at once
        self.min_finished = min_finished
        self._buckets: deque[_Bucket] = deque()
        self._arrived_total = 0
        self._finished_total = 0
        self._waiting_since: deque[float] = deque()
        self._last_step: float | None = None
        self._running = 0
        self._speed = 1.0
        self._work_per_request = 0.0
        self._first_tokens: deque[tuple[float, bool]] = deque()
        self._changed_at = -math.inf
        self._learnt_slots = 0
        self._started = math.inf
        self._work_sum = 0.0  # decayed dense slot-seconds...
        self._finished_sum = 0.0  # ...and decayed finished requests, both as of `_decayed_at`
        self._decayed_at: float | None = None

    # ---- inputs ----------------------------------------------------------------------------------
    def on_step(self, now: float, waiting: int, running: int, speedup: float) -> None:
        """Between engine steps: the waiting and running counts and the speed-up of the budget
        applied now."""
        bucket = self._bucket(now)
        self._started = min(self._started, now)
        if self._last_step is not None:
            self._decay(now)
            self._work_sum += self._running * self._speed * max(0.0, now - self._last_step)
        self._last_step, self._running, self._speed = now, running, speedup
        self._learnt_slots = max(self._learnt_slots, running)
        seen = waiting + running + self._finished_total
        if seen > self._arrived_total:
            bucket.arrivals += seen - self._arrived_total
            self._arrived_total = seen
        while len(self._waiting_since) > waiting:
            self._waiting_since.popleft()
        while len(self._waiting_since) < waiting:
            self._waiting_since.append(now)

    def on_finished(self, now: float) -> None:
        """A request left the pod (served or refused)."""
        self._finished_total += 1
        self._decay(now)
        self._finished_sum += 1.0

    def on_first_token(self, now: float, ttft_s: float, slo_s: float) -> None:
        """Kept by arrival time: a request that arrived before the budget changed waited under
        the old one, so its lateness says nothing about the new budget."""
        self._first_tokens.append((now - ttft_s, slo_s > 0 and ttft_s > slo_s))

    def on_budget_changed(self, now: float) -> None:
        """Misses measured before this moment were measured under another budget."""
        self._changed_at = now

    # ---- output ----------------------------------------------------------------------------------
    def summary(self, now: float, slo_s: float) -> LoadSignals:
        self._expire(now)
        self._decay(now)
        if self._finished_sum >= self.min_finished and now - self._started >= 10.0:
            # Little's law; in the first seconds only the short requests have finished while the
            # long ones' work is already counted, which would inflate the estimate
            self._work_per_request = self._work_sum / self._finished_sum
        oldest = now - self._waiting_since[0] if self._waiting_since else 0.0
        since = max(self._changed_at, now - self.latency_s)
        fresh = [late for t, late in self._first_tokens if t >= since]
        late_waiting = sum(1 for t in self._waiting_since
                           if t >= since and slo_s > 0 and now - t > slo_s)
        return LoadSignals(
            arrival_rate_short=self._rate(now, self.short_s),
            arrival_rate_long=self._rate(now, self.long_s),
            oldest_waiting_s=oldest,
            work_per_request_s=self._work_per_request,
            slots=self.slots if self.slots > 0 else self._learnt_slots,
            samples_since_change=len(fresh) + late_waiting,
            late_since_change=sum(fresh) + late_waiting,
        )

    # ---- internals -------------------------------------------------------------------------------
    def _rate(self, now: float, window_s: float) -> float:
        """Arrivals per second over the whole buckets inside `window_s` and the current one."""
        inside = [b for b in self._buckets if b.start >= now - window_s - 1e-9]
        if not inside:
            return 0.0
        span = max(now - inside[0].start, BUCKET_S)
        return sum(b.arrivals for b in inside) / max(span, min(window_s, now - self._started))

    def _decay(self, now: float) -> None:
        if self._decayed_at is not None and now > self._decayed_at:
            keep = math.exp(-(now - self._decayed_at) / self.work_tau_s)
            self._work_sum *= keep
            self._finished_sum *= keep
        self._decayed_at = now if self._decayed_at is None else max(now, self._decayed_at)

    def _bucket(self, now: float) -> _Bucket:
        start = math.floor(now / BUCKET_S) * BUCKET_S
        if not self._buckets or self._buckets[-1].start < start - 1e-9:
            self._buckets.append(_Bucket(start))
            self._expire(now)
        return self._buckets[-1]

    def _expire(self, now: float) -> None:
        while self._buckets and self._buckets[0].start <= now - self.long_s - BUCKET_S:
            self._buckets.popleft()
        while self._first_tokens and self._first_tokens[0][0] < now - self.latency_s:
            self._first_tokens.popleft()
