"""How long requests wait for a decode slot, as a pod with `slots` slots and a given speed serves
a Poisson stream: the M/M/c queue (Erlang C). Pure arithmetic for feed_forward.py.

Why a queueing model rather than a fixed target utilisation: the utilisation a pod can run at
and still start nearly every request within the TTFT SLO depends on how long a request holds its
slot against that SLO (a few long decodes over few slots queue far more than many short ones), so
the latency knee moves with the workload; Erlang C puts it where the measured work per request
and the slot count say it is.
"""

from __future__ import annotations

import math


def erlang_c(slots: int, offered: float) -> float:
    """Probability that an arrival waits, with `offered` = arrival rate × mean service time."""
    if offered <= 0:
        return 0.0
    if offered >= slots:
        return 1.0
    blocked = 1.0  # Erlang B by its recurrence, stable for large slot counts
    for k in range(1, slots + 1):
        blocked = offered * blocked / (k + offered * blocked)
    return slots * blocked / (slots - offered * (1.0 - blocked))


def wait_tail(rate: float, service_s: float, slots: int, wait_s: float) -> float:
    """Probability that a request waits longer than `wait_s` for a slot (1 when overloaded)."""
    if rate <= 0:
        return 0.0
    offered = rate * service_s
    if offered >= slots:
        return 1.0
    return erlang_c(slots, offered) * math.exp(-(slots / service_s - rate) * wait_s)


def speed_for_tail(rate: float, work_s: float, slots: int, wait_s: float, tail: float,
                   max_utilisation: float) -> float:
    """The smallest speed-up over dense at which at most `tail` of the requests wait longer than
    `wait_s` and the slots stay under `max_utilisation`; `work_s` is the dense service time."""
    if rate <= 0 or slots <= 0:
        return 0.0
    low = rate * work_s / (max_utilisation * slots)  # the utilisation cap alone
    if wait_tail(rate, work_s / low, slots, wait_s) <= tail:
        return low
    high = low * 2.0
    while wait_tail(rate, work_s / high, slots, wait_s) > tail:
        high *= 2.0
    for _ in range(30):
        mid = 0.5 * (low + high)
        if wait_tail(rate, work_s / mid, slots, wait_s) > tail:
            low = mid
        else:
            high = mid
    return high
