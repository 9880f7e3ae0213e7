"""The demo's live terminal view (rich): progress, budget, p95 against the SLO, queue, tokens/s,
and the controller's last reason. Pure rendering of a `LiveState`; demo/run.py updates the state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rich.console import Group
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text


@dataclass
class LiveState:
    phase: str = "starting"
    elapsed_s: float = 0.0
    total_s: float = 1.0
    offered_rps: float = 0.0
    budget: float = 1.0
    floor: float = 0.0
    p95_ttft_ms: float = math.nan
    slo_ms: float = math.nan
    queue_depth: int = 0
    running: int = 0
    tokens_per_s: float = 0.0
    expected_loss: float = 0.0
    reason: str = ""
    sent: int = 0
    completed: int = 0
    failed: int = 0


def _budget_bar(budget: float, width: int = 30) -> Text:
    filled = max(0, min(width, round(budget * width)))
    return Text("█" * filled + "░" * (width - filled) + f" {budget:.2f}", style="cyan")


def render(state: LiveState) -> Panel:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    met = not math.isnan(state.p95_ttft_ms) and state.p95_ttft_ms <= state.slo_ms
    p95_text = "—" if math.isnan(state.p95_ttft_ms) else f"{state.p95_ttft_ms:,.0f} ms"
    table.add_row("offered load", f"{state.offered_rps:.2f} req/s   sent {state.sent}, "
                  f"done {state.completed}, failed {state.failed}")
    table.add_row("budget", _budget_bar(state.budget))
    table.add_row("p95 TTFT", Text(f"{p95_text}  (SLO {state.slo_ms:,.0f} ms)",
                                   style="green" if met else "red"))
    table.add_row("queue / running", f"{state.queue_depth} / {state.running}")
    table.add_row("tokens/s", f"{state.tokens_per_s:,.1f}")
    table.add_row("expected loss", f"{state.expected_loss:.3f} (KL per token)")
    table.add_row("last decision", Text(state.reason or "—", overflow="fold"))
    progress = ProgressBar(total=state.total_s, completed=min(state.elapsed_s, state.total_s), width=40)
    header = Table.grid(padding=(0, 2))
    header.add_row(Text(f"{state.phase}", style="bold magenta"), progress,
                   Text(f"{state.elapsed_s:5.1f} / {state.total_s:.0f} s"))
    return Panel(Group(header, Text(""), table), title="dynasparse demo", border_style="blue")
