"""`dynasparse bench --serve` end to end on the CPU: it starts `dynasparse serve`, drives it with
streamed completions, and reports served beside engine-alone throughput, in JSON and a PNG."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_the_serving_benchmark_reports_served_and_engine_throughput_per_level(tmp_path):
    out, png = tmp_path / "serve.json", tmp_path / "serve.png"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(
        [sys.executable, "-m", "dynasparse", "bench", "--serve", "--model", "default",
         "--device", "cpu", "--levels", "1,2", "--seconds", "10", "--budgets", "1.0",
         "--prompt-len", "12", "--gen-len", "6", "--json", str(out), "--plot", str(png)],
        capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [r["streams"] for r in result["rows"]] == [1, 2]
    for row in result["rows"]:
        assert row["errors"] == 0 and row["requests"] >= 1 and row["engine_tokens_per_s"] > 0
        assert row["ratio"] == pytest.approx(row["served_tokens_per_s"] / row["engine_tokens_per_s"])
    assert sum(r["served_tokens_per_s"] for r in result["rows"]) > 0, "tokens reached the client"
    assert png.stat().st_size > 0
    assert "served" in proc.stdout and "engine" in proc.stdout
