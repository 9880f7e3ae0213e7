"""`dynasparse demo` end to end on the CPU: a real worker process, the real control law, real HTTP.

A few seconds of load only: this checks that the demo runs as a newcomer would run it and writes
what it promises (summary.json with both runs' figures, a PNG), not the figures themselves.
"""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

FIGURES = ("slo_attainment", "p95_ttft_ms", "p95_inter_token_ms", "tokens_per_s", "expected_quality_loss")


def test_short_demo_writes_summary_and_plot_for_both_runs(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "dynasparse", "demo", "--duration", "8", "--max-tokens", "6",
         "--out", str(out)],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    for run in ("adaptive", "fixed"):
        assert set(FIGURES) <= set(summary[run]), summary[run]
        assert summary[run]["requests"] > 0
        assert summary[run]["failed"] == 0
        assert 0.0 <= summary[run]["slo_attainment"] <= 1.0
        assert summary[run]["tokens_per_s"] > 0
    assert summary["fixed"]["mean_budget"] == pytest.approx(1.0)
    assert summary["fixed"]["expected_quality_loss"] == pytest.approx(0.0)
    assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "adaptive vs fixed dense budget" in result.stdout


def test_demo_rejects_a_duration_too_short_to_mean_anything():
    result = subprocess.run([sys.executable, "-m", "dynasparse", "demo", "--duration", "1"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "--duration must be at least 4 seconds" in result.stderr
