"""`dynasparse eval` end to end on a tiny model (JSON schema, plot), and its one-line refusals of bad
input with a non-zero exit and nothing written."""

from __future__ import annotations

import json

import pytest

from dynasparse.cli import main

ROW_KEYS = {"method", "budget", "bytes_skipped", "ppl", "ppl_ratio", "kl", "top1"}


@pytest.fixture
def tiny_dir(tmp_path, make_tiny, default_model, monkeypatch):
    """A tiny random Qwen2 saved with the default model's tokenizer; an isolated cache dir."""
    monkeypatch.setenv("DYNASPARSE_CACHE_DIR", str(tmp_path / "cache"))
    model = make_tiny("qwen2", vocab_size=default_model.tokenizer.vocab_size)
    directory = tmp_path / "tiny"
    model.save_pretrained(directory)
    default_model.tokenizer.save_pretrained(directory)
    return directory


def test_eval_writes_the_json_schema_and_a_plot(tiny_dir, tmp_path, capsys):
    out, png = tmp_path / "out.json", tmp_path / "out.png"
    code = main(["eval", "--model", str(tiny_dir), "--budgets", "1,0.7", "--sequences", "2", "--seq-len", "32",
                 "--json", str(out), "--plot", str(png), "--quiet"])
    assert code == 0
    payload = json.loads(out.read_text())
    assert payload["model"] == str(tiny_dir)
    assert {(r["method"], r["budget"]) for r in payload["rows"]} == {
        ("dynasparse", 1.0), ("dynasparse", 0.7), ("uniform", 1.0), ("uniform", 0.7)}
    assert all(ROW_KEYS <= set(r) for r in payload["rows"])
    assert png.stat().st_size > 1000
    assert "bytes skipped" in capsys.readouterr().out


@pytest.mark.parametrize("budgets, message", [("1,1.5", "outside"), ("0", "outside"), ("0.1", "floor"),
                                              ("a,b", "not a list")])
def test_bad_budgets_exit_2_with_one_line_and_write_nothing(tiny_dir, tmp_path, capsys, budgets, message):
    out = tmp_path / "out.json"
    code = main(["eval", "--model", str(tiny_dir), "--budgets", budgets, "--json", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after any progress bars
    assert code == 2 and err.startswith("error:") and message in err
    assert not out.exists()


@pytest.mark.parametrize("content", ["", "too short for 48 sequences"])
def test_empty_or_too_short_text_is_refused(tiny_dir, tmp_path, capsys, content):
    text = tmp_path / "text.txt"
    text.write_text(content)
    code = main(["eval", "--model", str(tiny_dir), "--text", str(text), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "pass a longer text" in err


def test_unknown_model_is_refused(capsys, tmp_path):
    code = main(["eval", "--model", "nobody/nothing-here", "--json", str(tmp_path / "x.json"), "--quiet"])
    assert code == 2 and "error:" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_calibration_made_for_another_model_is_refused(tiny_dir, tmp_path, capsys, make_tiny):
    from dynasparse_worker.gating import install_gates
    from dynasparse_worker.gating.artifact import save_artifact
    from dynasparse_worker.gating.calibrate import CalibrationSettings, calibrate
    import torch

    other = make_tiny("llama", seed=3)
    settings = CalibrationSettings(sequences=2, seq_len=16, validation_sequences=1, bucket_edges=(1,))
    ids = torch.randint(0, 256, (3, 16))
    calibration = calibrate(install_gates(other, (1,)), ids[:2], ids[2:], settings, "0123456789abcdef", "other",
                            progress=False)
    path = save_artifact(calibration, tmp_path / "other.safetensors")
    code = main(["eval", "--model", str(tiny_dir), "--calibration", str(path), "--sequences", "1",
                 "--seq-len", "16", "--quiet"])
    assert code == 2 and "calibrated for model" in capsys.readouterr().err


def test_calibrate_writes_an_artifact_that_eval_accepts(tiny_dir, tmp_path):
    from dynasparse_worker.gating.artifact import load_artifact

    path = tmp_path / "calib.safetensors"
    code = main(["calibrate", "--model", str(tiny_dir), "--sequences", "2", "--seq-len", "32", "--out", str(path)])
    assert code == 0 and load_artifact(path).model_name == str(tiny_dir)
    code = main(["eval", "--model", str(tiny_dir), "--calibration", str(path), "--budgets", "1,0.8",
                 "--sequences", "1", "--seq-len", "32", "--quiet"])
    assert code == 0


def test_at_bytes_skipped_reports_our_kl_as_a_multiple_of_uniforms_at_the_same_bytes():
    from dynasparse_worker.evaluation.quality import Row, at_bytes_skipped

    rows = [Row("dynasparse", 1.0, 0.0, 10.0, 1.0, 0.0, 1.0), Row("dynasparse", 0.5, 0.5, 12.0, 1.2, 0.2, 0.7),
            Row("uniform", 1.0, 0.0, 10.0, 1.0, 0.0, 1.0), Row("uniform", 0.5, 0.5, 15.0, 1.5, 0.8, 0.5)]
    levels = {(e["method"], e["bytes_skipped"]): e for e in at_bytes_skipped(rows, levels=(0.25, 0.5))}
    assert levels[("dynasparse", 0.5)]["kl_vs_uniform"] == 0.25
    assert levels[("dynasparse", 0.25)]["kl_vs_uniform"] == 0.25  # both linear from dense
    assert "kl_vs_uniform" not in levels[("uniform", 0.5)]
