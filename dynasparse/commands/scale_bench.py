"""`dynasparse scale-bench`: operator CPU, memory and decision latency from 10 to 500 control streams.

Thin: parses flags into a BenchConfig, runs dynasparse.scale_bench.run, prints the table and
writes JSON and a PNG. Called by dynasparse/cli.py (and `python -m dynasparse.scale_bench`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = ("Measure one operator driving many simulated workers over mTLS gRPC: CPU, memory and "
        "violation-to-budget latency per stream count.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--streams", default="10,50,100,250,500", help="stream counts to measure, comma-separated")
    a("--pods-per-model", type=int, default=10,
      help="pods per AdaptiveModel (one control loop each); 0: one model with every pod")
    a("--rounds", type=int, default=5, help="violations per model per level")
    a("--round-s", type=float, default=2.5, help="seconds between a model's violations")
    a("--idle-s", type=float, default=3.0, help="seconds measured with streams open, no violations")
    a("--report-interval-s", type=float, default=None,
      help="report interval the operator asks of the workers (default: the operator's own)")
    a("--json", type=Path, default=None, help="write the figures here")
    a("--plot", type=Path, default=None, help="draw them here (PNG; needs matplotlib)")
    a("--profile-dir", type=Path, default=None,
      help="write a cProfile of the operator process per level here (operator-N.prof)")


def config_from(args: argparse.Namespace):
    from dynasparse.scale_bench.run import BenchConfig, BenchError
    from dynasparse_proto.limits import REPORT_INTERVAL_RANGE_S

    try:
        streams = tuple(int(s) for s in args.streams.split(",") if s.strip())
    except ValueError:
        streams = ()
    if not streams or min(streams) < 1 or max(streams) > 15000:
        raise BenchError(f"--streams {args.streams!r}: pass stream counts between 1 and 15000, "
                         "e.g. 10,50,100")
    if args.rounds < 1 or args.round_s < 1.0 or args.idle_s < 0 or args.pods_per_model < 0:
        raise BenchError("--rounds must be at least 1, --round-s at least 1 s (the law holds a "
                         "second after a cut), --idle-s and --pods-per-model not negative")
    low, high = REPORT_INTERVAL_RANGE_S
    if args.report_interval_s is not None and not low <= args.report_interval_s <= high:
        raise BenchError(f"--report-interval-s must be within [{low:g}, {high:g}] s: workers clamp "
                         "any other value into that range")
    return BenchConfig(streams=streams, pods_per_model=args.pods_per_model, rounds=args.rounds,
                       round_s=args.round_s, idle_s=args.idle_s, profile_dir=args.profile_dir,
                       report_interval_s=args.report_interval_s)


def run(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from dynasparse.scale_bench import report
    from dynasparse.scale_bench.run import run_bench

    config = config_from(args)

    def progress(level: dict) -> None:
        own = level["violation_to_budget_s"]
        print(f"{level['streams']} streams: operator CPU {level['operator_cpu_per_s_violations']:.3f} "
              f"s/s, violation -> budget p95 {report._ms(own['p95'])} ms, "
              f"{level['answered']}/{level['violations']} answered", file=sys.stderr, flush=True)

    result = asyncio.run(run_bench(config, progress))
    print(report.table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if args.plot and not report.plot(result, args.plot):
        print("no plot: matplotlib is not installed", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    from dynasparse.cli import main as cli_main

    return cli_main(["scale-bench", *(sys.argv[1:] if argv is None else argv)])
