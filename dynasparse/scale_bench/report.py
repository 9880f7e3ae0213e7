"""The benchmark's table (text) and plot (PNG): operator cost and decision latency per stream count."""

from __future__ import annotations

from pathlib import Path

COLUMNS = ("streams", "models", "connect s", "op CPU idle", "op CPU viol.", "loop thread",
           "budget p50 ms", "p95 ms", "max ms", "decided p95 ms", "all pods p95 ms", "max ms",
           "answered", "RSS MB")


def table(result: dict) -> str:
    rows = [COLUMNS]
    for lv in result["levels"]:
        own, fan = lv["violation_to_budget_s"], lv["violation_to_all_pods_s"]
        built = lv["violation_to_command_built_s"]
        rows.append((str(lv["streams"]), str(lv["models"]), f"{lv['connect_s']:.1f}",
                     f"{lv['operator_cpu_per_s_idle']:.3f}",
                     f"{lv['operator_cpu_per_s_violations']:.3f}",
                     f"{lv['operator_loop_thread_cpu_per_s_violations']:.3f}",
                     _ms(own["p50"]), _ms(own["p95"]), _ms(own["max"]), _ms(built["p95"]),
                     _ms(fan["p95"]), _ms(fan["max"]),
                     f"{lv['answered']}/{lv['violations']}",
                     f"{lv['rss_mb_end']:.0f} (+{lv['rss_mb_end'] - lv['rss_mb_baseline']:.0f})"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + (
        "\n\nop CPU: operator process CPU seconds per wall second, all its threads (loop thread: "
        "the asyncio thread alone, during violations); budget: violating report leaves the worker "
        "-> lower budget arrives back at it; decided: -> the operator built that command (wall "
        "clock, ms); all pods: every pod of that model has it")


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1000 * seconds:.0f}"


def plot(result: dict, path: Path) -> bool:
    """Draw cost and latency against streams; False when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = result["levels"]
    x = [lv["streams"] for lv in levels]
    fig, (cpu, lat, mem) = plt.subplots(1, 3, figsize=(14, 4.2))
    cpu.plot(x, [lv["operator_cpu_per_s_idle"] for lv in levels], "o-", label="streams open, reports")
    cpu.plot(x, [lv["operator_cpu_per_s_violations"] for lv in levels], "s-",
             label="with violations and budget changes")
    cpu.axhline(1.0, color="grey", ls="--", lw=1, label="one core")
    cpu.set(xlabel="control streams", ylabel="operator CPU s per s", title="operator CPU")
    cpu.legend(fontsize=8)
    for key, style in (("p50", "o-"), ("p95", "s-"), ("max", "^-")):
        lat.plot(x, [_ms_or_nan(lv["violation_to_budget_s"][key]) for lv in levels], style,
                 label=f"{key}, violating pod")
    lat.plot(x, [_ms_or_nan(lv["violation_to_all_pods_s"]["p95"]) for lv in levels], "x:",
             label="p95, every pod of the model")
    lat.axhline(1000.0, color="grey", ls="--", lw=1, label="1 s target")
    lat.set(xlabel="control streams", ylabel="ms", title="violating report → lower budget back")
    lat.legend(fontsize=8)
    mem.plot(x, [lv["rss_mb_end"] for lv in levels], "o-", label="at the end")
    mem.plot(x, [lv["rss_mb_baseline"] for lv in levels], "s:", label="before the streams")
    mem.set(xlabel="control streams", ylabel="MB", title="operator resident memory")
    mem.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _ms_or_nan(seconds: float | None) -> float:
    return float("nan") if seconds is None else 1000 * seconds
