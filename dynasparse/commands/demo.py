"""`dynasparse demo`: the closed loop on one machine, adaptive against a fixed dense budget.

Thin: parses flags into a DemoConfig and runs dynasparse.demo.run. Called by dynasparse/cli.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "Show the closed loop on this machine: a 3x load ramp, adaptive budget vs fixed dense."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--model", default="default", help="model to serve ('default': embedded SmolLM2-135M-Instruct)")
    a("--duration", type=float, default=120.0,
      help="seconds of load in all, split between the adaptive and the fixed run (default 120)")
    a("--slo-ms", type=float, default=None,
      help="p95 time-to-first-token SLO in ms (default: sized from this machine's measured speed)")
    a("--out", type=Path, default=Path("demo-out"), help="folder for summary.json, demo.png, logs")
    a("--calibration", default="auto",
      help="calibration artifact ('auto': the model's cached one, made on first use)")
    a("--min-budget", type=float, default=0.4, help="quality floor as a budget (default 0.4)")
    a("--max-loss", type=float, default=None,
      help="quality floor as an expected loss (KL per token) instead of --min-budget")
    a("--max-tokens", type=int, default=24, help="tokens generated per demo request")
    a("--interval", type=float, default=1.0, help="control interval in seconds")
    a("--seed", type=int, default=0, help="seed of the arrival times")


class DemoArgumentError(Exception):
    user_error = True


def run(args: argparse.Namespace) -> int:
    import asyncio

    from rich.console import Console

    from dynasparse.demo.run import DemoConfig, run_demo

    if args.duration < 4:
        raise DemoArgumentError("--duration must be at least 4 seconds (2 per run)")
    if not 0.0 < args.min_budget <= 1.0:
        raise DemoArgumentError(f"--min-budget {args.min_budget} is not in (0, 1]")
    if args.slo_ms is not None and args.slo_ms <= 0:
        raise DemoArgumentError("--slo-ms must be positive")
    config = DemoConfig(model=args.model, duration_s=args.duration, slo_ms=args.slo_ms,
                        out_dir=args.out, max_tokens=args.max_tokens, min_budget=args.min_budget,
                        max_loss=args.max_loss, interval_s=args.interval, seed=args.seed,
                        calibration=args.calibration)
    asyncio.run(run_demo(config, Console()))
    return 0
