"""`dynasparse bench` runs on the CPU and writes the documented JSON."""

from __future__ import annotations

import json

import pytest

from dynasparse.cli import main


def test_bench_on_a_small_shape_writes_engine_and_hf_rows(tmp_path):
    out = tmp_path / "bench.json"
    code = main(["bench", "--shape", "tiny", "--device", "cpu", "--batch-sizes", "1,2",
                 "--prompt-len", "8", "--gen-len", "4", "--hf-gen-len", "3", "--json", str(out),
                 "--plot", str(tmp_path / "bench.png")])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["roofline_tokens_per_s"] > 0
    rows = {(r["engine"], r["batch_size"]) for r in result["rows"]}
    assert rows == {("dynasparse", 1), ("dynasparse", 2), ("hf", 1), ("hf", 2)}
    for row in result["rows"]:
        assert row["budget"] == 1.0 and row["tokens_per_s"] > 0 and row["ms_per_token"] > 0
    assert (tmp_path / "bench.png").stat().st_size > 0


@pytest.mark.parametrize("flag", [["--budgets", "0"], ["--batch-sizes", "x"]])
def test_bench_refuses_bad_flags_with_a_one_line_error(flag, capsys):
    assert main(["bench", "--shape", "tiny", "--device", "cpu", *flag]) == 2
    assert capsys.readouterr().err.startswith("error: ")
