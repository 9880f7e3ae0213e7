"""The measured speed of every plan level on the device in use, and which levels buy speed.

A plan level is a byte budget; whether reading fewer bytes makes a step faster depends on the GPU
and the shape (the sparse kernels' fixed cost per launch, small projection groups, a batch's union
of active channels). So at start-up the engine times, per engine batch bucket and calibrated
level, the decode step of every candidate that computes the level (the kernels the measured
crossover picks, every group dense, every group sparse: same result, different speed), keeps the
fastest, and *offers* a level only if it is faster than every denser offered level there, by
`min_gain`. The plan table then serves a budget by offered levels only (`PlanTable.offered`), so a
lower budget never runs a slower plan; what was dropped, and why, is logged and reported
(`SpeedTable.report` in the bench JSON, `stats` in the engine's stats).

Timing goes through a `StepTimer`, injectable: `ReplayTimer` (CUDA graph replays, or eager steps on
the CPU, timed with events / the wall clock) measures for real; tests pass a deterministic one.
Called by `Engine.__init__`: on CUDA always (a few replays per captured graph), elsewhere only
when a timer is given (an eager CPU step is slow and noisy to time at start-up).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch

from dynasparse_worker.engine.plans import DENSE, GraphKey, Signature, Variant, kernel_alternatives

log = logging.getLogger(__name__)


class StepTimer(Protocol):
    def __call__(self, run: Callable[[], Any], bucket: int, key: GraphKey, budget: float) -> float:
        """Milliseconds one decode step `run()` takes (graph `key` of engine bucket `bucket`,
        the state set to the level of `budget`)."""


@dataclass
class ReplayTimer:
    """Median of `repeats` timed runs after `warmup` untimed ones (CUDA events on the GPU)."""

    repeats: int = 5
    warmup: int = 1

    def __call__(self, run: Callable[[], Any], bucket: int, key: GraphKey, budget: float) -> float:
        for _ in range(self.warmup):
            run()
        times = []
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        for _ in range(self.repeats):
            if cuda:
                start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
                start.record()
                run()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                run()
                times.append(1000 * (time.perf_counter() - t0))
        return sorted(times)[len(times) // 2]


@dataclass(frozen=True)
class LevelSpeed:
    """One calibrated level at one engine batch bucket: its fastest graph and whether it is offered."""

    budget: float
    key: GraphKey  # the fastest candidate computing this level
    width: float  # the width sparsity the level runs at
    ms: float  # measured step time of `key`
    candidates: dict[Signature, float]  # every candidate's step time
    offered: bool
    note: str = ""  # why not offered, or which fallback made it pay


@dataclass
class SpeedTable:
    """Per engine batch bucket: the dense step time and every level's measured speed."""

    device: str
    plan_bucket: dict[int, int]  # engine bucket -> plan bucket
    dense_ms: dict[int, float] = field(default_factory=dict)
    levels: dict[int, list[LevelSpeed]] = field(default_factory=dict)

    def offered_mask(self, num_levels: int, num_plan_buckets: int) -> torch.Tensor:
        """[K, NB] bool: a level is offered in a plan bucket when every measured engine bucket
        that maps to it offers it (plan buckets nothing measured keep every level)."""
        mask = torch.ones(num_levels, num_plan_buckets, dtype=torch.bool)
        for bucket, levels in self.levels.items():
            nb = self.plan_bucket[bucket]
            for k, level in enumerate(levels):
                mask[k, nb] &= level.offered
        mask[0] = True
        return mask

    def signature_for(self, bucket: int, variant: Variant, width: float) -> Signature | None:
        """The measured-fastest kernels for this variant at this width (the level with that
        variant whose width is the nearest at or above it), or None when nothing was measured."""
        best = None
        for level in self.levels.get(bucket, []):
            if level.key[0][1] == variant[1] and level.width >= width - 1e-6:
                if best is None or level.width < best.width:
                    best = level
        return None if best is None else best.key[1]

    def report(self) -> dict:
        """JSON-ready: per engine bucket, each level's step time, speed-up and offer."""
        out = {"device": self.device, "buckets": {}}
        for bucket, levels in self.levels.items():
            dense = self.dense_ms[bucket]
            out["buckets"][str(bucket)] = dict(dense_ms=dense, levels=[dict(
                budget=lv.budget, ms=lv.ms, speedup=dense / lv.ms, offered=lv.offered,
                note=lv.note, kernels=list(lv.key[1]), halves_skipped=_skipped(lv.key[0]),
                candidates={"/".join(sig) or "dense": ms for sig, ms in lv.candidates.items()},
            ) for lv in levels])
        return out

    def stats(self) -> dict[str, float]:
        """Flat numbers for `EngineStats.extra`: levels offered and the sparsest offered level's
        measured speed-up, per engine batch bucket."""
        out: dict[str, float] = {}
        for bucket, levels in self.levels.items():
            offered = [lv for lv in levels if lv.offered]
            out[f"speed_levels_offered_b{bucket}"] = float(len(offered))
            out[f"speed_levels_dropped_b{bucket}"] = float(len(levels) - len(offered))
            out[f"speed_best_speedup_b{bucket}"] = self.dense_ms[bucket] / offered[-1].ms
        return out


def _skipped(variant: Variant) -> int:
    depth = variant[1]
    return 0 if depth is None else sum((not a) + (not m) for a, m in depth)


def _timing_inputs(runner: Any, bucket: int, position: int = 31) -> None:
    """Decode inputs for timing: random tokens at a mid-sequence position in the scratch slot
    (its cache content does not matter for speed; token 0 at position 0 would be atypical)."""
    tokens = torch.randint(0, runner.model.shape.vocab, (bucket,),
                           generator=torch.Generator().manual_seed(bucket))
    position = min(position, runner.cache.max_seq_len - 2)
    runner.inputs[0, :bucket].copy_(tokens)
    runner.inputs[1, :bucket].fill_(position)
    runner.inputs[2, :bucket].fill_(runner.cache.scratch_slot)
    runner.inputs[3, :bucket].fill_(position + 1)


def _step(runner: Any, bucket: int, key: GraphKey, width: float) -> Callable[[], Any]:
    """One decode step of graph `key`: its replay where captured, else the eager forward."""
    captured = runner.graphs.get((bucket, key))
    if captured is not None:
        return captured[0].replay
    return lambda: runner.decode_forward(bucket, key[0], width, key[1] or None)


def _served_variant(runner: Any, bucket: int, variant: Variant) -> Variant:
    """The variant whose graph serves `variant`: itself, or for an ungated depth plan (no width
    gate on, some halves skipped) its gated twin where only that was captured (as
    `plans.fallback` picks it at run time; its thresholds are then all zero)."""
    if runner.graphs and not any(v == variant for v, _ in runner.captured(bucket)):
        return (True, variant[1])
    return variant


def _candidates(runner: Any, bucket: int, variant: Variant, width: float) -> list[Signature]:
    """The kernel choices to time: the captured graphs of this variant (CUDA), else the
    candidates of the crossover's choice (eager)."""
    if runner.graphs:
        found = sorted(sig for v, sig in runner.captured(bucket) if v == variant)
        if found:
            return found
    if not variant[0]:  # an ungated depth plan runs no gated kernel: one way to run it
        return [()]
    return kernel_alternatives(runner.signature(bucket, width))


def measure_speed(runner: Any, gated: Any, apply_budget: Callable[[float], Any],
                  timer: StepTimer | None = None, min_gain: float = 0.02,
                  buckets: list[int] | None = None) -> SpeedTable:
    """Time every level of `gated.table` at each engine bucket; attach the result to the runner
    (its graph choice) and the table (`offered`). `apply_budget` is the engine's own
    (`Engine.apply_budget`: state tensors and the runner's host plan together). The state ends
    at budget 1.0."""
    timer = timer or ReplayTimer()
    table = gated.table
    table.offered = None  # measure the levels themselves, not an earlier snap
    device = (torch.cuda.get_device_name(runner.device) if runner.device.type == "cuda"
              else runner.device.type)
    speed = SpeedTable(device=device, plan_bucket={})
    budgets = [float(b) for b in table.budgets.tolist()]
    for bucket in buckets or runner.buckets:
        nb = runner.plan_bucket(bucket)
        speed.plan_bucket[bucket] = nb
        _timing_inputs(runner, bucket)
        apply_budget(1.0)
        speed.dense_ms[bucket] = timer(_step(runner, bucket, (DENSE, ()), 0.0), bucket,
                                       (DENSE, ()), 1.0)
        fastest = speed.dense_ms[bucket]
        levels = []
        for budget in budgets:
            plan = apply_budget(budget).plan
            variant, width = plan.variants[nb], plan.width_sparsity[nb]
            if variant == DENSE:  # no gate skips a channel, every half runs: the dense graph
                served, times = DENSE, {(): speed.dense_ms[bucket]}
            else:
                served, times = _served_variant(runner, bucket, variant), {}
                for sig in _candidates(runner, bucket, served, width):
                    times[sig] = timer(_step(runner, bucket, (served, sig), width), bucket,
                                       (served, sig), budget)
            sig, ms = min(times.items(), key=lambda item: item[1])
            offered = budget >= 1.0 or ms < fastest * (1.0 - min_gain)
            note = ""
            if not offered:
                note = (f"{ms:.3f} ms is not {min_gain:.0%} faster than the denser offered "
                        f"level's {fastest:.3f} ms")
            elif sig and sig != runner.signature(bucket, width):
                note = f"faster with kernels {'/'.join(sig)} than the crossover's choice"
            if offered:
                fastest = ms
            levels.append(LevelSpeed(budget, (served, sig), width, ms, times, offered, note))
        speed.levels[bucket] = levels
        dropped = [lv.budget for lv in levels if not lv.offered]
        if dropped:
            log.info("batch bucket %d on %s: levels %s not offered (no faster than a denser "
                     "level); budgets there run the next denser offered level", bucket, device,
                     ", ".join(f"{b:.2f}" for b in dropped))
    apply_budget(1.0)
    table.offered = speed.offered_mask(len(budgets), len(table.bucket_edges))
    runner.speed = speed
    apply_budget(1.0)  # re-read through the offered levels
    return speed
