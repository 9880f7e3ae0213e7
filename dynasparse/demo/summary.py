"""Turns a demo run's request records and budget timeline into summary.json and a PNG.

Pure over its inputs (records, samples); the plot writes one file. Called by dynasparse.demo.run
after the adaptive and the fixed-budget runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from dynasparse.demo.load import RequestRecord


@dataclass(frozen=True)
class TimelineSample:
    """What the controller saw at one moment of a run (seconds since the load started)."""

    t: float
    budget: float
    p95_ttft_ms: float
    queue_depth: int
    tokens_per_s: float
    offered_rps: float
    expected_loss: float = 0.0
    reason: str = ""


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize_run(records: Sequence[RequestRecord], samples: Sequence[TimelineSample],
                  slo_ttft_ms: float, duration_s: float) -> dict:
    """SLO attainment, tail latencies, throughput and the time-weighted expected quality loss."""
    done = [r for r in records if r.status == "ok" and r.ttft_s is not None]
    ttfts_ms = [r.ttft_s * 1000 for r in done]
    gaps_ms = [g * 1000 for r in done for g in r.inter_token_s]
    within = sum(1 for v in ttfts_ms if v <= slo_ttft_ms)
    tokens = sum(r.tokens for r in done)
    last_finish = max((r.finished_at or 0.0) for r in records) if records else duration_s
    losses = [s.expected_loss for s in samples]  # samples are evenly spaced: a time average
    return {
        "requests": len(records),
        "failed": sum(1 for r in records if r.status != "ok"),
        # A failed request missed its SLO too.
        "slo_attainment": within / len(records) if records else math.nan,
        "p95_ttft_ms": percentile(ttfts_ms, 95),
        "p50_ttft_ms": percentile(ttfts_ms, 50),
        "p95_inter_token_ms": percentile(gaps_ms, 95),
        "tokens_per_s": tokens / max(last_finish, 1e-9),
        "expected_quality_loss": sum(losses) / len(losses) if losses else 0.0,
        "mean_budget": sum(s.budget for s in samples) / len(samples) if samples else 1.0,
    }


def rolling_p95_ms(records: Sequence[RequestRecord], t: float, window_s: float) -> float:
    """p95 TTFT of requests that got their first token in (t - window, t]."""
    values = [r.ttft_s * 1000 for r in records
              if r.ttft_s is not None and t - window_s < r.sent_at + r.ttft_s <= t]
    return percentile(values, 95)


def plot_runs(path, runs: dict[str, tuple[Sequence[RequestRecord], Sequence[TimelineSample]]],
              slo_ttft_ms: float) -> None:
    """Three stacked panels: offered load, p95 TTFT against the SLO, budget — one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_load, ax_p95, ax_budget) = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    colors = {"adaptive": "tab:blue", "fixed": "tab:red"}
    for name, (records, samples) in runs.items():
        color = colors.get(name)
        ts = [s.t for s in samples]
        ax_load.plot(ts, [s.offered_rps for s in samples], color=color, label=name)
        ax_p95.plot(ts, [rolling_p95_ms(records, t, 5.0) for t in ts], color=color, label=name)
        ax_budget.step(ts, [s.budget for s in samples], where="post", color=color, label=name)
    ax_p95.axhline(slo_ttft_ms, color="black", linestyle="--", linewidth=1, label="SLO")
    ax_load.set_ylabel("offered load (req/s)")
    ax_p95.set_ylabel("p95 TTFT, 5 s window (ms)")
    ax_p95.set_yscale("log")
    ax_budget.set_ylabel("budget")
    ax_budget.set_ylim(0, 1.05)
    ax_budget.set_xlabel("time (s)")
    for ax in (ax_load, ax_p95, ax_budget):
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    fig.suptitle("dynasparse demo: adaptive budget vs fixed dense budget")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
