"""Plain data the control law reads and writes: reports, pod facts, parameters, state, decisions.

No kopf, kubernetes or grpc here: the daemon converts protobuf Reports and Node/Pod objects into
these, and the local demo and the simulation tests build them by hand. Times are seconds on one
monotonic clock chosen by the caller.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

from dynasparse_proto.contract import LoadSignals, Mode


@dataclasses.dataclass(frozen=True)
class PodReport:
    """The latest report of one worker, as the law needs it."""

    name: str
    received_at: float
    ttft_p95_ms: float = 0.0
    inter_token_p95_ms: float = 0.0
    samples: int = 0  # TTFT samples (requests) in the worker's window
    inter_token_samples: int = -1  # inter-token samples; -1: same as `samples`
    queue_depth: int = 0
    running: int = 0  # requests in the decode batch (queue_depth counts only the waiting ones)
    applied_budget: float = 1.0
    expected_loss: float = 0.0
    min_budget: float = 0.0  # sparsest budget the worker's calibration offers
    quality_curve: tuple[tuple[float, float], ...] = ()  # (budget, expected loss)
    mode: Mode = Mode.NORMAL
    load: LoadSignals | None = None  # None: the worker reports no load signals


@dataclasses.dataclass(frozen=True)
class PodFacts:
    """What the cluster says about one ready worker pod (signals.py builds these)."""

    name: str
    node: str = ""
    pressure: tuple[str, ...] = ()  # e.g. ("MemoryPressure",)
    disruption: tuple[str, ...] = ()  # e.g. ("aws-node-termination-handler/spot-itn",)


@dataclasses.dataclass(frozen=True)
class LawParams:
    """Targets and tuning, from the spec and the operator's ControlSettings."""

    ttft_slo_ms: float = 0.0  # 0: no target on this axis
    inter_token_slo_ms: float = 0.0
    min_budget: float | None = None  # quality floor given as a budget...
    max_loss: float | None = None  # ...or as an expected loss mapped through the quality curve
    max_budget: float = 1.0
    interval_s: float = 2.0
    responsiveness: float = 0.5
    setpoint_ratio: float = 0.8
    deadband: float = 0.15
    pressure_ceiling_factor: float = 0.75
    stale_after_s: float = 3.0
    settle_s: float = 1.0  # after a change, how long until reports reflect it (window + report)
    min_samples: int = 5
    episode_s: float = 10.0  # after a cut, how long the workers' windows still hold the late
    # samples it acted on (cuts within it belong to one violation)
    replace_disrupted_pods: bool = False
    max_utilisation: float = 0.9  # of the decode slots, whatever the queueing model says
    wait_slack: float = 0.8  # of the TTFT SLO, the wait for a slot the feed-forward plans for
    tail_target: float = 0.02  # the modelled share of requests waiting longer, where a cut lands...
    tail_tighten: float = 0.06  # ...once the current level's share would exceed this...
    tail_relax: float = 0.01  # ...and the share a level must keep to be relaxed to
    drain_s: float = 5.0  # a backlog is planned to drain over this long...
    panic_drain_s: float = 1.0  # ...and this fast when the queue ages or the rate jumps
    aging_fraction: float = 0.4  # a request waiting this fraction of the TTFT SLO wakes the law
    jump_sigmas: float = 4.0  # a short-window count this many Poisson sigmas over the long rate
    relax_window_s: float = 20.0  # relax only to the lowest recommendation of this long
    relax_deadband: float = 0.05  # and only when that is this much above the current level
    miss_confidence_z: float = 2.33  # the trim cuts on a miss fraction known at this confidence
    relax_confidence_z: float = 1.64  # and gives back when the misses are under it at this one
    trim_max_cut: float = 0.85  # the trim's largest cut in one decision (a factor)
    trim_relax_factor: float = 1.05  # and its step back up

    @property
    def gain(self) -> float:
        """Integral gain on the log-space error (per decision)."""
        return 0.3 + 0.9 * self.responsiveness

    @property
    def relax_gain(self) -> float:
        """Integral gain when relaxing: a third of the cutting gain (latency rises steeply)."""
        return self.gain / 3.0

    @property
    def max_step_down(self) -> float:
        """Largest log-space cut in one decision (0.5 responsiveness: × 0.6; 1: × 0.35)."""
        return math.log(1.0 / (0.35 + 0.5 * (1.0 - self.responsiveness)))

    @property
    def max_step_up(self) -> float:
        """Largest log-space relaxation in one decision (0.5 responsiveness: × 1.08)."""
        return math.log(1.03 + 0.1 * self.responsiveness)

    @property
    def tighten_holdoff_s(self) -> float:
        """After a change, how long before the next cut (the reports must show the last one)."""
        return self.settle_s

    @property
    def relax_holdoff_s(self) -> float:
        """After a change, how long before relaxing (slower up than down)."""
        return 2.0 * max(self.interval_s, self.settle_s)

    @property
    def band(self) -> tuple[float, float]:
        """p95/SLO ratios between which the budget is held: twice as wide below the setpoint as
        above, because one relaxing step raises p95 steeply near saturation."""
        return (self.setpoint_ratio * math.exp(-2 * self.deadband),
                min(1.0, self.setpoint_ratio * math.exp(self.deadband)))


@dataclasses.dataclass(frozen=True)
class LawState:
    """What the law remembers between decisions. Restart safety: rebuild from status.budget."""

    budget: float = 1.0
    last_change_at: float = -math.inf
    last_error: float = 0.0
    draining: frozenset[str] = frozenset()  # pods already accounted as lost capacity
    cut_ratio: float = 0.0  # worst p95/SLO the last cut acted on (0: the last change was no cut)
    load_budget: float = math.nan  # the feed-forward's level (nan: not known, e.g. after a restart)
    recommendations: tuple[tuple[float, float], ...] = ()  # (time, budget) over the relax window


@dataclasses.dataclass(frozen=True)
class PodCommand:
    """What one pod is told: becomes a ControlMessage."""

    name: str
    target_budget: float
    floor: float
    ceiling: float
    mode: Mode
    reason: str


@dataclasses.dataclass(frozen=True)
class Decision:
    """The law's output: commands per pod, the new state, and why."""

    at: float
    state: LawState
    commands: Mapping[str, PodCommand]
    from_budget: float
    to_budget: float
    reason: str  # one line a person understands
    kind: str  # slo-violation | load | panic | relax | hold | disruption | no-data | bounds
    floor: float
    ceiling: float
    worst_ratio: float | None = None  # worst pod's p95 / SLO, over both axes
    ttft_p95_ms: float | None = None
    inter_token_p95_ms: float | None = None
    observation: str = ""  # 'p95 TTFT 812 ms > SLO 500 ms' for the worst fresh pod
    surge_replicas: int = 0
    events: tuple[str, ...] = ()  # feed-forward messages (pressure, disruption)
    problems: tuple[str, ...] = ()  # spec errors a user must fix (maxBudget below the quality floor)
    overloaded: str = ""  # why the load exceeds what the floor serves within the SLO ("" if not)

    @property
    def changed(self) -> bool:
        return abs(self.to_budget - self.from_budget) > 1e-9
