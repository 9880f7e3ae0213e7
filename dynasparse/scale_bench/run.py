"""One benchmark level per stream count: fleet up, operator process up, violations, figures.

`run_level` starts the simulated workers of a fresh plan in this process, the operator in a child
process (`operator_side.py`), waits until every pod applied the operator's first update (the
streams are up), measures an idle window (streams and reports only), then a violation schedule:
in each round every model has one pod report p95 TTFT at `ratio` × the SLO (the ratio grows
by `RATIO_GROWTH` a round, so each round is a new, worse violation for the law, not the same
evidence again), the models' start times spread evenly over the round. `run_bench` runs the
levels in turn and returns what `report.py` tabulates and plots.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from dynasparse.scale_bench.fleet import Fleet
from dynasparse.scale_bench.plan import make_plan

FIRST_RATIO = 1.6
RATIO_GROWTH = 1.25


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    streams: tuple[int, ...] = (10, 50, 100, 250, 500)
    pods_per_model: int = 10  # 0: one model with every pod
    rounds: int = 5
    round_s: float = 2.5  # longer than the law's hold-off after a cut
    idle_s: float = 3.0
    timeout_s: float = 5.0  # a violation without a lower budget by then counts as missed
    connect_timeout_s: float = 120.0
    ttft_slo_ms: float = 500.0
    report_interval_s: float | None = None  # None: the operator's default
    profile_dir: Path | None = None  # cProfile of the operator process per level


class BenchError(Exception):
    user_error = True


async def run_level(config: BenchConfig, streams: int, folder: Path) -> dict:
    intervals = {} if config.report_interval_s is None else {"report_interval_s": config.report_interval_s}
    plan = make_plan(folder, streams, config.pods_per_model, ttft_slo_ms=config.ttft_slo_ms, **intervals)
    plan_path = folder / "plan.json"
    plan.save(plan_path)
    fleet = Fleet(plan)
    await fleet.start()
    argv = [sys.executable, "-m", "dynasparse.scale_bench.operator_side", str(plan_path)]
    if config.profile_dir is not None:
        config.profile_dir.mkdir(parents=True, exist_ok=True)
        argv += ["--profile", str(config.profile_dir / f"operator-{streams}.prof")]
    log_path = folder / "operator.log"
    with open(log_path, "wb") as log:
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE,
                                                    stdout=asyncio.subprocess.PIPE, stderr=log)
    try:
        operator = _OperatorPipe(proc, log_path)
        baseline = await operator.answer()
        load = {"loadavg_start": os.getloadavg()}
        started = time.monotonic()
        while fleet.steered() < streams:
            if time.monotonic() - started > config.connect_timeout_s:
                raise BenchError(f"{streams} streams: only {fleet.steered()} pods steered after "
                                 f"{config.connect_timeout_s:.0f} s; the operator said:\n"
                                 f"{_tail(log_path)}")
            if proc.returncode is not None:
                raise BenchError(f"the operator process ended early:\n{_tail(log_path)}")
            await asyncio.sleep(0.05)
        connect_s = time.monotonic() - started
        idle = {**await operator.mark("idle"), "reports": fleet.reports_sent()}
        await asyncio.sleep(config.idle_s)
        active = {**await operator.mark("active"), "reports": fleet.reports_sent()}
        fleet_cpu = _cpu()
        await _violations(fleet, config)
        end = {**await operator.mark("end"), "reports": fleet.reports_sent()}
        fleet_cpu = _cpu() - fleet_cpu
        totals = await operator.stop()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await fleet.stop()
    load["loadavg_end"] = os.getloadavg()
    return _level_figures(streams, plan, fleet, baseline, idle, active, end, totals,
                          connect_s=connect_s, fleet_cpu=fleet_cpu, load=load)


async def _violations(fleet: Fleet, config: BenchConfig) -> None:
    models = list(fleet.pods_of)
    t0 = time.monotonic()
    schedule = sorted((k * config.round_s + m * config.round_s / len(models), k, model)
                      for k in range(config.rounds) for m, model in enumerate(models))
    for at, k, model in schedule:
        await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
        if model in fleet.open:  # the previous round's violation is still unanswered
            fleet.give_up(model)
        fleet.violate(model, k, k, FIRST_RATIO * RATIO_GROWTH ** k)
    deadline = time.monotonic() + config.timeout_s
    while fleet.open and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    for model in list(fleet.open):
        fleet.give_up(model)


def _tail(log_path: Path, lines: int = 20) -> str:
    """The end of the operator's log (its folder is temporary and goes with the run)."""
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _level_figures(streams, plan, fleet, baseline, idle, active, end, totals, *, connect_s,
                   fleet_cpu, load) -> dict:
    def rate(a, b, key="cpu_s"):
        return (b[key] - a[key]) / (b["at"] - a["at"])

    def per_report_ms(a, b, key="cpu_s"):
        return 1000 * (b[key] - a[key]) / max(1, b["reports"] - a["reports"])

    own = [e.own_s for e in fleet.episodes if e.own_s is not None]
    fan_out = [e.all_s for e in fleet.episodes if e.all_s is not None]
    return {
        "streams": streams, "models": len(plan.models), "report_interval_s": plan.report_interval_s,
        "pods_per_model": max(len(m.pods) for m in plan.models),
        "connect_s": connect_s,
        "operator_cpu_per_s_connect": rate(baseline, idle),
        "operator_cpu_per_s_idle": rate(idle, active),
        "operator_cpu_per_s_violations": rate(active, end),
        "operator_loop_thread_cpu_per_s_idle": rate(idle, active, "loop_cpu_s"),
        "operator_loop_thread_cpu_per_s_violations": rate(active, end, "loop_cpu_s"),
        "reports_per_s_idle": (active["reports"] - idle["reports"]) / (active["at"] - idle["at"]),
        "operator_cpu_ms_per_report_idle": per_report_ms(idle, active),
        "operator_loop_thread_cpu_ms_per_report_idle": per_report_ms(idle, active, "loop_cpu_s"),
        "fleet_cpu_per_s_violations": fleet_cpu / (end["at"] - active["at"]),
        "rss_mb_baseline": baseline["rss_mb"], "rss_mb_end": end["rss_mb"],
        "peak_rss_mb": totals["peak_rss_mb"],
        "violations": len(fleet.episodes), "answered": len(own),
        "missed": len(fleet.episodes) - len(own), "fan_out_complete": len(fan_out),
        "violation_to_budget_s": _percentiles(own),
        "violation_to_all_pods_s": _percentiles(fan_out),
        "violation_to_command_built_s": _percentiles(
            [e.operator_s for e in fleet.episodes if e.operator_s is not None]),
        "status_patches": totals["status_patches"], "events": totals["events"],
        **load,
    }


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "max": None}
    ordered = sorted(values)

    def at(q):
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"n": len(ordered), "p50": at(0.5), "p95": at(0.95), "max": ordered[-1]}


class _OperatorPipe:
    """The operator process's stdin/stdout protocol (see operator_side.py)."""

    def __init__(self, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self.proc, self.log_path = proc, log_path

    async def answer(self, timeout: float = 60.0) -> dict:
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise BenchError(f"the operator process ended:\n{_tail(self.log_path)}")
        return json.loads(line)

    async def mark(self, name: str) -> dict:
        self.proc.stdin.write(f"mark {name}\n".encode())
        await self.proc.stdin.drain()
        return await self.answer()

    async def stop(self) -> dict:
        self.proc.stdin.write(b"stop\n")
        await self.proc.stdin.drain()
        totals = await self.answer()
        await asyncio.wait_for(self.proc.wait(), 30.0)
        return totals


async def run_bench(config: BenchConfig, on_level=None) -> dict:
    """Every level in turn; `on_level(figures)` after each (for progress output)."""
    levels = []
    with tempfile.TemporaryDirectory(prefix="dynasparse-scale-") as tmp:
        for streams in config.streams:
            figures = await run_level(config, streams, Path(tmp) / f"streams-{streams}")
            levels.append(figures)
            if on_level:
                on_level(figures)
    return {"config": {k: (str(v) if isinstance(v, Path) else v)
                       for k, v in dataclasses.asdict(config).items()},
            "cpu_count": os.cpu_count(), "levels": levels}
