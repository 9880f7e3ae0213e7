"""`dynasparse scale-bench` at a small scale: simulated workers on real mTLS gRPC, the operator's
own control loops in their own process, violations answered with lower budgets, figures written.

Seconds, not minutes: 20 streams, two rounds. Checks that the benchmark runs and writes what it
promises, not its timings.
"""

import argparse
import json
import subprocess
import sys

import pytest

from dynasparse.commands import scale_bench
from dynasparse.scale_bench import report
from dynasparse.scale_bench.run import BenchError

PERCENTILES = ("violation_to_budget_s", "violation_to_all_pods_s", "violation_to_command_built_s")


def test_twenty_streams_answer_every_violation_and_write_table_json_and_plot(tmp_path):
    out_json, out_png = tmp_path / "scale.json", tmp_path / "scale.png"
    result = subprocess.run(
        [sys.executable, "-m", "dynasparse", "scale-bench", "--streams", "20", "--pods-per-model",
         "5", "--rounds", "2", "--round-s", "1.5", "--idle-s", "0.5", "--json", str(out_json),
         "--plot", str(out_png)],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads(out_json.read_text())
    (level,) = figures["levels"]
    assert (level["streams"], level["models"], level["pods_per_model"]) == (20, 4, 5)
    assert level["violations"] == 4 * 2, "one violation per model and round"
    assert level["answered"] == level["violations"] and level["missed"] == 0
    assert level["fan_out_complete"] == level["violations"], "every pod of the model got the cut"
    for key in PERCENTILES:
        stats = level[key]
        assert stats["n"] == level["violations"]
        assert 0.0 <= stats["p50"] <= stats["p95"] <= stats["max"]
    assert level["reports_per_s_idle"] > 0
    for key in ("operator_cpu_per_s_idle", "operator_cpu_per_s_violations",
                "operator_cpu_ms_per_report_idle"):
        assert level[key] > 0.0
    assert level["rss_mb_end"] >= level["rss_mb_baseline"] > 0
    assert report.table(figures).splitlines()[2].split()[:2] == ["20", "4"]
    if report.plot(figures, tmp_path / "again.png"):
        assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("flags", [["--streams", "ten"], ["--streams", "0"], ["--round-s", "0.5"],
                                   ["--rounds", "0"], ["--report-interval-s", "0.01"]])
def test_flags_that_cannot_make_a_benchmark_are_refused_with_what_to_pass(flags):
    parser = argparse.ArgumentParser()
    scale_bench.add_arguments(parser)
    with pytest.raises(BenchError):
        scale_bench.config_from(parser.parse_args(flags))
