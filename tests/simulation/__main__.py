"""`python3 -m tests.simulation [--seeds N] [--json PATH] [--only NAME ...]`: every trace over N
seeds through the production law and worker controller; prints a table, writes the figures."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import time

from tests.simulation.harness import Simulation
from tests.simulation.scenarios import PARAMS, QUALITY_FLOOR, SCENARIOS


def summarise(outcomes) -> dict:
    onsets = [o.onset_to_applied_s for o in outcomes if o.onset_to_applied_s is not None]
    nexts = [o.late_to_next_cut_s for o in outcomes if o.late_to_next_cut_s is not None]
    return {
        "runs": len(outcomes),
        "miss_pct": 100 * statistics.mean(o.miss_fraction for o in outcomes),
        "windows_over_pct": 100 * statistics.mean(o.windows_over for o in outcomes),
        "reversals_per_5min_max": max(o.reversals_per_5min for o in outcomes),
        "reversals_per_5min_mean": statistics.mean(o.reversals_per_5min for o in outcomes),
        "onset_to_applied_s_max": max(onsets) if onsets else None,
        "onset_runs": len(onsets),
        "late_to_next_cut_s_max": max(nexts) if nexts else None,
        "idle_relaxes_with_requests": sum(o.idle_relaxes_with_requests for o in outcomes),
        "relaxes_past_slo": sum(o.relaxes_past_slo for o in outcomes),
        "min_applied_budget": min(o.min_applied_budget for o in outcomes),
        "mean_applied_budget": statistics.mean(o.mean_applied_budget for o in outcomes),
        "budget_changes_mean": statistics.mean(o.budget_changes for o in outcomes),
    }


def _seconds(value: float | None) -> str:
    return "-" if value is None else ("never" if math.isinf(value) else f"{value:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--json", default="")
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    started = time.process_time()
    table, runs = {}, []
    for name, scenario in SCENARIOS.items():
        if args.only and name not in args.only:
            continue
        outcomes = [Simulation(scenario, PARAMS, seed).run() for seed in range(args.seeds)]
        runs += [dataclasses.asdict(o) for o in outcomes]
        table[name] = summarise(outcomes)
    head = (f"{'trace':<12} {'miss%':>6} {'win>SLO%':>8} {'rev/5m max':>10} {'onset→applied s':>15} "
            f"{'late→next cut s':>15} {'idle-relax busy':>15} {'relax past SLO':>14} {'min budget':>10} "
            f"{'mean budget':>11} {'changes':>7}")
    print(head)
    for name, s in table.items():
        onset, after = (_seconds(s["onset_to_applied_s_max"]),
                        _seconds(s["late_to_next_cut_s_max"]))
        print(f"{name:<12} {s['miss_pct']:>6.2f} {s['windows_over_pct']:>8.1f} "
              f"{s['reversals_per_5min_max']:>10.1f} {onset:>15} {after:>15} "
              f"{s['idle_relaxes_with_requests']:>15} {s['relaxes_past_slo']:>14} "
              f"{s['min_applied_budget']:>10.2f} {s['mean_applied_budget']:>11.2f} "
              f"{s['budget_changes_mean']:>7.1f}")
    cpu = time.process_time() - started
    print(f"quality floor {QUALITY_FLOOR}; {args.seeds} seeds; {cpu:.1f} s CPU")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"table": table, "runs": runs, "cpu_s": cpu, "seeds": args.seeds}, f,
                      indent=1, default=lambda x: None)


if __name__ == "__main__":
    main()
