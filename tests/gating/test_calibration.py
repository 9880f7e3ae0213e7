"""Calibration on tiny random models of two families: levels, artifact round trip, refusal of a foreign
artifact, and measured bytes skipped tracking the budget — untuned on a non-Llama family."""

from __future__ import annotations

import pytest
import torch

from dynasparse_worker.errors import UserError
from dynasparse_worker.gating import install_gates
from dynasparse_worker.gating.artifact import load_artifact, save_artifact
from dynasparse_worker.gating.calibrate import CalibrationSettings, calibrate
from dynasparse_worker.models.fingerprint import model_fingerprint

SETTINGS = CalibrationSettings(sequences=4, seq_len=32, batch_size=2, samples_per_batch=32,
                               validation_sequences=1, floor=0.4, step=0.05, bucket_edges=(1, 4, 16))


def _calibrated(model):
    gated = install_gates(model, bucket_edges=SETTINGS.bucket_edges)
    ids = torch.randint(0, 256, (5, 32), generator=torch.Generator().manual_seed(1))
    calibration = calibrate(gated, ids[:4], ids[4:], SETTINGS, model_fingerprint(model), "tiny", progress=False)
    return gated, calibration, ids


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_measured_bytes_skipped_follow_the_budget_on_calibration_text(make_tiny, family):
    gated, calibration, ids = _calibrated(make_tiny(family))
    assert float(calibration.table.budgets[-1]) == pytest.approx(0.4)
    measured = []
    with torch.no_grad():
        for budget in (0.9, 0.7, 0.5):
            gated.set_budget(budget)
            with gated.counting():
                gated.model(ids[:4])
            measured.append(gated.bytes_skipped())
    assert measured == sorted(measured)
    for budget, skipped in zip((0.9, 0.7, 0.5), measured):
        assert abs(skipped - (1 - budget)) < 0.08


def test_expected_loss_grows_as_the_budget_shrinks(make_tiny):
    gated, calibration, _ = _calibrated(make_tiny("qwen2"))
    losses = [gated.expected_loss(b) for b in (1.0, 0.9, 0.7, 0.5, 0.4)]
    assert losses[0] == 0 and losses == sorted(losses) and losses[-1] > 0
    assert calibration.measured["kl"] == sorted(calibration.measured["kl"])


def test_artifact_round_trips_and_refuses_another_model(make_tiny, tmp_path):
    model = make_tiny("llama")
    gated, calibration, _ = _calibrated(model)
    path = save_artifact(calibration, tmp_path / "calib.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["calib.safetensors"]  # no temporary left behind
    again = load_artifact(path, model_fingerprint(model))
    torch.testing.assert_close(again.table.thresholds, calibration.table.thresholds)
    assert again.settings == calibration.settings
    other = make_tiny("llama", seed=1)
    with pytest.raises(UserError, match="calibrated for model"):
        load_artifact(path, model_fingerprint(other))


def test_a_file_that_is_not_an_artifact_is_refused(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 32)
    with pytest.raises(UserError, match="not a dynasparse calibration"):
        load_artifact(junk)
