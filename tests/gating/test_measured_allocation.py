"""Allocation by measured error at each block's output, on tiny random models: the greedy path of a
block, measured half costs under Gemma's post-norms, and the levels built from the paths."""

from __future__ import annotations

import torch

from dynasparse_worker.gating import install_gates
from dynasparse_worker.gating.calibrate import CalibrationSettings, calibrate
from dynasparse_worker.gating.measured import BlockProbe, capture_blocks, greedy_path, half_costs
from dynasparse_worker.models.fingerprint import model_fingerprint


def _settings(allocation: str) -> CalibrationSettings:
    return CalibrationSettings(sequences=4, seq_len=32, batch_size=2, samples_per_batch=32,
                               validation_sequences=1, floor=0.4, step=0.05, bucket_edges=(1, 4),
                               allocation=allocation, steps=5, probe_tokens=32)


def _ids():
    return torch.randint(0, 256, (5, 32), generator=torch.Generator().manual_seed(1))


def _probe(gated, layer: int, ids) -> BlockProbe:
    captured = capture_blocks(gated, ids[:1])
    fisher = torch.ones(gated.structure.hidden)  # [H] plain squared error at the block output
    return BlockProbe(gated, layer, captured[layer], fisher)


def test_a_greedy_path_raises_one_group_by_one_step_at_a_time_up_to_the_last_level(make_tiny):
    gated = install_gates(make_tiny("llama"))
    probe = _probe(gated, 1, _ids())
    grid = torch.tensor([[0.0, 0.1, 0.2], [0.0, 0.1, 0.2], [0.0, 0.1, 0.2], [0.0, 0.1, 0.2]])  # [4, 3]
    thresholds, cost = greedy_path(probe, grid, torch.tensor([4.0, 1.0, 2.0, 2.0]))
    assert thresholds.shape == (9, 4) and cost.shape == (9,)
    steps = (thresholds[1:] > thresholds[:-1]).sum(1)  # groups raised per step
    assert steps.tolist() == [1] * 8
    assert torch.equal(thresholds[-1], grid[:, -1])
    assert cost[0] == 0 and cost[-1] > 0


def test_the_probe_leaves_every_gate_dense_after_measuring(make_tiny):
    gated = install_gates(make_tiny("gemma3"))
    probe = _probe(gated, 0, _ids())
    half_costs(probe)
    probe.error(torch.full((4,), 1.0))
    assert float(gated.state.active_thresholds.abs().sum()) == 0
    assert float(gated.state.active_layer_keep.min()) == 1


def test_skipping_a_post_normed_gemma_half_is_measured_as_costly(make_tiny):
    """Gemma normalises each half's output before the residual add, so a gradient at the projection
    output sees no cost in dropping it; the measured cost at the block output does."""
    gated = install_gates(make_tiny("gemma3"))
    costs = half_costs(_probe(gated, 1, _ids()))
    assert float(costs.min()) > 1e-3


def test_a_near_dense_budget_skips_no_whole_half_of_a_gemma_model(make_tiny):
    model = make_tiny("gemma3")
    settings = _settings("measured")
    gated = install_gates(model, bucket_edges=settings.bucket_edges)
    ids = _ids()
    calibrate(gated, ids[:4], ids[4:], settings, model_fingerprint(model), "tiny", progress=False)
    plan = gated.table.plan_for(0.9)
    assert float(plan.layer_keep[0].min()) == 1.0  # batch 1: width only


def test_measured_levels_beat_uniform_sparsity_at_equal_bytes_on_a_tiny_model(make_tiny):
    from dynasparse_worker.evaluation.quality import at_bytes_skipped, evaluate

    model = make_tiny("llama")
    settings = _settings("measured")
    gated = install_gates(model, bucket_edges=settings.bucket_edges)
    ids = _ids()
    calibration = calibrate(gated, ids[:4], ids[4:], settings, model_fingerprint(model), "tiny", progress=False)
    held_out = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(7))
    _, rows = evaluate(gated, calibration, held_out, [1.0, 0.8, 0.6, 0.45], batch_size=4, progress=False)
    levels = {(e["method"], e["bytes_skipped"]): e["kl"] for e in at_bytes_skipped(rows, levels=(0.4,))}
    assert levels[("dynasparse", 0.4)] < levels[("uniform", 0.4)]
