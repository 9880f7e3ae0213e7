"""Print the gated engine's speed per (batch, budget) from `dynasparse bench --json` files, with
whether the start-up speed table offers the level and its measured graph-replay speed-up.

    python3 scripts/gpu/speed_summary.py sparse-8b.json [more.json ...]
"""

from __future__ import annotations

import json
import sys


def summary(path: str) -> None:
    try:
        with open(path) as f:
            result = json.load(f)
    except (OSError, ValueError) as exc:
        print(f"{path}: not readable ({exc})")
        return
    print(f"{result.get('model')} on {result.get('device')}:")
    print(f"{'batch':>5} {'budget':>6} {'speed-up':>8} {'offered':>8} {'table x':>8} kernels / note")
    for row in result.get("rows", []):
        if row.get("engine") != "dynasparse-gated":
            continue
        table = row.get("level_measured_speedup")
        print(f"{row['batch_size']:>5} {row['budget']:>6.2f} {row['speedup']:>7.2f}x "
              f"{str(row.get('level_offered', '-')):>8} "
              f"{(f'{table:.2f}x' if table else '-'):>8} {row.get('level_kernels', '')} "
              f"{row.get('level_note', '')}")
    for row in result.get("budget_switch", []):
        print(f"switch -> {row['budget']:.2f} (batch {row['batch_size']}): "
              f"{row['set_budget_ms']:.3f} ms, captures {row['captures_during']}, "
              f"allocated {row['allocated_bytes_during']}")


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        summary(arg)
