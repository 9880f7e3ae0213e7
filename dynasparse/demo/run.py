"""`dynasparse demo`, the whole run: a worker, the operator's control law, a 3x load ramp, twice.

1. Start `dynasparse serve` on loopback with development mTLS certificates.
2. Measure the machine's dense capacity; size the SLO and the load ramp from it (unless --slo-ms).
3. Adaptive run: the local controller (the operator's control law over the gRPC stream) moves the
   budget while the load ramps up 3x and back down.
4. Fixed run: the same load (same arrival times) with the budget pinned at 1.0.
   Each run starts at a dense budget once the worker reports an empty latency window (the probe's
   or the previous run's latencies forgotten), so the law reacts only to the run's own load.
5. Write summary.json, demo.png and the timelines; print the comparison.
Called by dynasparse/commands/demo.py; tests/cli/test_demo.py runs a few-second version.
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from dynasparse.demo.capacity import Capacity, measure_capacity
from dynasparse.demo.controller import LocalController
from dynasparse.demo.load import RampSchedule, RequestRecord, run_load
from dynasparse.demo.summary import TimelineSample, percentile, plot_runs, summarize_run
from dynasparse.demo.view import LiveState, render
from dynasparse.demo.worker_process import DemoError, start_worker
from dynasparse_operator.grpc_client import ClientTls
from dynasparse_operator.law_types import LawParams
from dynasparse_worker.control.pki import make_dev_bundle, write_bundle

WORKER_WINDOW_S = 30.0  # dynasparse serve's sliding latency window (control/window.py)
CLEAN_WINDOW_SLACK_S = 60.0  # beyond WORKER_WINDOW_S, on a loaded machine, before giving up
MIN_BASE_RPS = 0.2  # so even a short demo sends a few requests per run

PROMPTS = [
    "Explain in one sentence why the sky is blue.",
    "Write a haiku about autumn leaves.",
    "What is the capital of France?",
    "Give three tips for writing clear code.",
    "Describe a cat to someone who has never seen one.",
    "Why do we have seasons on Earth?",
]


@dataclass(frozen=True)
class DemoConfig:
    model: str = "default"
    duration_s: float = 120.0  # both runs together
    slo_ms: float | None = None
    out_dir: Path = Path("demo-out")
    max_tokens: int = 24
    min_budget: float = 0.4
    max_loss: float | None = None
    interval_s: float = 1.0
    peak_factor: float = 3.0
    seed: int = 0
    calibration: str = "auto"  # the model's cached calibration (made once, on first use)
    worker_args: tuple[str, ...] = ()


def size_slo(capacity: Capacity) -> float:
    """A TTFT SLO a dense worker meets at the base load but not at 3x: 4x the unloaded TTFT."""
    return float(max(100.0, round(4.0 * capacity.unloaded_ttft_ms, -1)))


async def _one_run(name: str, cfg: DemoConfig, worker, schedule: RampSchedule, params: LawParams,
                   tls: ClientTls, fixed_budget: float | None, live: Live, state: LiveState
                   ) -> tuple[list[RequestRecord], list[TimelineSample]]:
    controller = LocalController("127.0.0.1", worker.control_port, tls, params, fixed_budget)
    stop = asyncio.Event()
    control_task = asyncio.create_task(controller.run(stop))
    samples: list[TimelineSample] = []
    state.total_s = schedule.duration_s

    def on_tick(t: float, records: list[RequestRecord]) -> None:
        report = controller.view.report
        recent = [r.ttft_s * 1000 for r in records if r.ttft_s is not None and r.sent_at + r.ttft_s > t - 5]
        state.elapsed_s = t
        state.offered_rps = schedule.rate_at(t)
        state.sent = len(records)
        state.completed = sum(1 for r in records if r.status == "ok")
        state.failed = sum(1 for r in records if r.status not in ("ok", "pending"))
        state.p95_ttft_ms = percentile(recent, 95)
        state.reason = controller.view.reason
        if report is not None:
            state.budget = report.applied_budget
            state.floor = report.floor
            state.queue_depth = report.queue_depth
            state.running = report.running_sequences
            state.tokens_per_s = report.tokens_per_s
            state.expected_loss = report.expected_quality_loss
            if report.last_decision.source == "fast-loop":
                state.reason = f"fast loop: {report.last_decision.reason}"
        samples.append(TimelineSample(t=t, budget=state.budget, p95_ttft_ms=state.p95_ttft_ms,
                                      queue_depth=state.queue_depth, tokens_per_s=state.tokens_per_s,
                                      offered_rps=state.offered_rps, expected_loss=state.expected_loss,
                                      reason=state.reason))
        live.update(render(state))

    try:
        await _start_clean(name, controller, worker, live, state)
        state.phase = f"{name} run"
        records = await run_load(worker.http_url, schedule, PROMPTS, cfg.max_tokens, on_tick, cfg.seed)
    finally:
        stop.set()
        await control_task
    return records, samples


async def _start_clean(name: str, controller: LocalController, worker, live: Live,
                       state: LiveState) -> None:
    """Returns once the worker runs this run's first command (the fixed run's 1.0 must not be
    measured at the adaptive run's last budget) and its latency window holds nothing from before
    (the probe's or the previous run's queueing would otherwise cut the budget at t=0); then the
    law may decide."""
    await controller.wait_until_applied()
    state.phase = f"{name} run: waiting for the worker's latency window to forget earlier load"
    state.elapsed_s, state.offered_rps, state.budget = 0.0, 0.0, 1.0

    def on_wait(samples_left: int) -> None:
        state.reason = f"{samples_left} earlier TTFT samples still in the worker's 30 s window"
        live.update(render(state))

    limit_s = WORKER_WINDOW_S + CLEAN_WINDOW_SLACK_S
    if not await controller.wait_until_window_clean(limit_s, on_wait):
        raise DemoError(f"the worker's latency window did not empty within {limit_s:.0f} s; "
                        f"see {worker.log_path}")
    controller.start_run()


def _comparison_table(summary: dict) -> Table:
    table = Table(title="adaptive vs fixed dense budget")
    table.add_column("")
    for name in ("adaptive", "fixed"):
        table.add_column(name, justify="right")
    rows = [("SLO attainment", "slo_attainment", "{:.1%}"), ("p95 TTFT (ms)", "p95_ttft_ms", "{:,.0f}"),
            ("p95 inter-token (ms)", "p95_inter_token_ms", "{:,.1f}"),
            ("tokens/s", "tokens_per_s", "{:,.1f}"), ("mean budget", "mean_budget", "{:.2f}"),
            ("expected quality loss", "expected_quality_loss", "{:.3f}"),
            ("requests / failed", None, None)]
    for label, key, fmt in rows:
        if key is None:
            table.add_row(label, *(f"{summary[n]['requests']} / {summary[n]['failed']}" for n in ("adaptive", "fixed")))
            continue
        table.add_row(label, *("—" if isinstance(summary[n][key], float) and math.isnan(summary[n][key])
                               else fmt.format(summary[n][key]) for n in ("adaptive", "fixed")))
    return table


async def run_demo(cfg: DemoConfig, console: Console) -> dict:
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    bundle = make_dev_bundle()
    write_bundle(bundle, out / "tls")
    tls = ClientTls((out / "tls" / "ca.crt").read_bytes(), (out / "tls" / "client.crt").read_bytes(),
                    (out / "tls" / "client.key").read_bytes())
    with console.status("starting the worker (first run: the default model is dequantized and "
                        "calibrated, a few minutes on 2 CPU cores)…"):
        worker = await asyncio.to_thread(start_worker, cfg.model, out / "tls", out / "worker.log",
                                         ["--calibration", cfg.calibration, *cfg.worker_args])
    try:
        probe_s = max(2.0, min(10.0, cfg.duration_s * 0.08))
        with console.status(f"measuring this machine's dense capacity ({probe_s:.0f} s)…"):
            capacity = await measure_capacity(worker.http_url, PROMPTS, cfg.max_tokens, probe_s, 4)
        slo_ms = cfg.slo_ms or size_slo(capacity)
        base_rps = max(MIN_BASE_RPS, 0.4 * capacity.dense_requests_per_s)
        if base_rps > 0.5 * capacity.dense_requests_per_s:
            console.print(f"[yellow]this machine serves only {capacity.dense_requests_per_s:.2f} req/s "
                          f"dense right now (is it busy?): the base load of {base_rps:.2f} req/s already "
                          "crowds it, so both runs will be overloaded; free the machine or lower "
                          "--max-tokens for a meaningful comparison[/yellow]")
        console.print(f"dense capacity ≈ {capacity.dense_requests_per_s:.2f} req/s "
                      f"(unloaded TTFT {capacity.unloaded_ttft_ms:.0f} ms): SLO p95 TTFT {slo_ms:.0f} ms, "
                      f"load {base_rps:.2f} → {base_rps * cfg.peak_factor:.2f} req/s")
        schedule = RampSchedule(base_rps, cfg.duration_s / 2, cfg.peak_factor)
        params = LawParams(ttft_slo_ms=slo_ms, interval_s=cfg.interval_s, responsiveness=0.6,
                           min_budget=None if cfg.max_loss is not None else cfg.min_budget,
                           max_loss=cfg.max_loss, min_samples=3, stale_after_s=3 * cfg.interval_s)
        state = LiveState(slo_ms=slo_ms)
        with Live(render(state), console=console, refresh_per_second=4, transient=False) as live:
            adaptive = await _one_run("adaptive", cfg, worker, schedule, params, tls, None, live, state)
            fixed = await _one_run("fixed", cfg, worker, schedule, params, tls, 1.0, live, state)
    finally:
        await asyncio.to_thread(worker.stop)
    runs = {"adaptive": adaptive, "fixed": fixed}
    summary = {name: summarize_run(recs, samples, slo_ms, schedule.duration_s)
               for name, (recs, samples) in runs.items()}
    summary["config"] = {"model": cfg.model, "slo_ttft_ms": slo_ms, "base_rps": base_rps,
                         "peak_factor": cfg.peak_factor, "run_seconds": schedule.duration_s,
                         "capacity": asdict(capacity), "max_tokens": cfg.max_tokens}
    (out / "summary.json").write_text(json.dumps(_finite(summary), indent=2))
    (out / "timeline.json").write_text(json.dumps(
        _finite({name: [asdict(s) for s in samples] for name, (_, samples) in runs.items()}), indent=1))
    plot_runs(out / "demo.png", runs, slo_ms)
    console.print(_comparison_table(summary))
    console.print(f"wrote {out / 'summary.json'}, {out / 'demo.png'}, {out / 'timeline.json'}")
    return summary


def _finite(value):
    """JSON has no NaN: an undefined figure (no request finished) is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
