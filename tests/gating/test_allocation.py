"""The greedy allocation gives a monotone path of levels that meets every byte target."""

from __future__ import annotations

import torch

from dynasparse_worker.gating.allocation import Allocation, summarise, uniform_thresholds


def _synthetic(layers=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    widths = [16, 16, 16, 48]
    samples = []
    for layer in range(layers):
        for group, width in enumerate(widths):
            scale = (1 + layer) * (1 + group) * 0.1
            samples.append(torch.randn(256, width, generator=generator).abs() * scale)
    elements = torch.tensor([[16 * 48, 16 * 16, 16 * 96, 48 * 16]] * layers, dtype=torch.float32)
    half_cost = torch.full((layers, 2), 5.0)
    return samples, elements, half_cost, generator


def test_levels_meet_their_byte_targets_and_get_monotonically_sparser():
    samples, elements, half_cost, generator = _synthetic()
    edges = (1, 4, 16)
    dist = summarise(samples, edges, generator)
    budgets = [1.0, 0.9, 0.75, 0.6, 0.5]
    thresholds, keep, loss = Allocation(elements, half_cost, edges).build(dist, budgets)
    assert thresholds.shape == (5, 3, 3, 4) and keep.shape == (5, 3, 3, 2) and loss.shape == (5, 3)
    assert torch.all(thresholds[0] == 0) and torch.all(keep[0] == 1) and torch.all(loss[0] == 0)
    assert torch.all(thresholds[1:] >= thresholds[:-1]) and torch.all(keep[1:] <= keep[:-1])
    assert torch.all(loss[1:] >= loss[:-1]) and torch.all(loss[-1] > 0)
    # bucket 1: the fraction of bytes skipped by the width thresholds reaches 1 - budget
    share = (elements / elements.sum()).reshape(-1)
    for level, budget in enumerate(budgets[1:], start=1):
        frac = torch.stack([(s <= t).float().mean() for s, t in zip(samples, thresholds[level, 0].reshape(-1))])
        skipped = float((frac * share).sum()) if bool(keep[level, 0].all()) else 1.0
        assert skipped >= (1 - budget) - 0.02


def test_cheap_depth_halves_are_skipped_at_large_batch_where_width_fades():
    samples, elements, half_cost, generator = _synthetic()
    half_cost[0, 1] = 1e-6  # the MLP of layer 0 costs nothing to skip
    edges = (1, 64)
    dist = summarise(samples, edges, generator)
    _, keep, _ = Allocation(elements, half_cost, edges).build(dist, [1.0, 0.7])
    assert keep[1, 1, 0, 1] == 0


def test_uniform_thresholds_skip_the_same_fraction_in_every_group():
    samples, *_ = _synthetic()
    thresholds = uniform_thresholds(samples, [0.0, 0.5])
    assert torch.all(thresholds[0] == 0)
    for values, t in zip(samples, thresholds[1]):
        assert abs(float((values <= t).float().mean()) - 0.5) < 0.02
