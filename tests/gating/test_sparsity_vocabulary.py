"""The sparsity vocabulary the gated model, the engine and the kernels share: plan buckets, the gate
rule, groups and halves, and the byte accounting of a plan."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dynasparse_worker.engine.model import LinearOps
from dynasparse_worker.gating.gated_linear import GatedLinear
from dynasparse_worker.gating.state import SparsityState
from dynasparse_worker.kernels.engine_ops import SparseLinearOps
from dynasparse_worker.sparsity import (ATTENTION, CLOSING_GROUP, GROUP_NAMES, HALF_OF_GROUP, MLP,
                                        MLP_IN, bucket_index, groups_to_halves, keep_mask,
                                        kept_fraction, width_sparsity)


@pytest.mark.parametrize("batch, bucket", [(1, 0), (2, 1), (3, 2), (4, 2), (5, 3), (8, 3), (9, 3),
                                           (1000, 3)])
def test_a_batch_follows_the_first_plan_bucket_whose_edge_holds_it_and_the_last_beyond(batch, bucket):
    edges = (1, 2, 4, 8)
    assert bucket_index(edges, batch) == bucket
    assert SparsityState([[8, 8, 8, 8]], edges).bucket_index(batch) == bucket


def test_a_channel_is_kept_only_when_its_scaled_magnitude_is_strictly_above_the_threshold():
    x = torch.tensor([[-2.0, 0.5, 1.0, -0.25]])
    scale = torch.tensor([1.0, 2.0, 1.0, 8.0])
    assert keep_mask(x, torch.tensor(1.0), scale).tolist() == [[True, False, False, True]]
    assert keep_mask(x, torch.tensor(1.0)).tolist() == [[True, False, False, False]]


def test_a_bfloat16_input_is_scored_in_float32():
    x = torch.tensor([[1.0]], dtype=torch.bfloat16)
    scale = torch.tensor([1.0001])  # 1.0 once rounded to bfloat16: the channel would be dropped
    assert keep_mask(x, torch.tensor(1.00005), scale).tolist() == [[True]]


def test_the_hf_gates_the_engine_and_the_kernels_keep_the_same_channels():
    gen = torch.Generator().manual_seed(0)
    state = SparsityState([[32, 32, 32, 32]])
    state.thresholds.fill_(0.6)
    state.col_scale(0, MLP_IN).uniform_(0.5, 1.5, generator=gen)
    state.select_bucket(0)
    linear = nn.Linear(32, 16, bias=False)
    x = torch.randn(5, 32, generator=gen)
    expected = nn.functional.linear(x * keep_mask(x, torch.tensor(0.6), state.col_scale(0, MLP_IN)),
                                    linear.weight)
    hf = GatedLinear(linear, state, layer=0, group=MLP_IN, leader=True, half=None)(x)
    engine = LinearOps(state).project(x, linear.weight, None, 0, MLP_IN, 0)
    kernels = SparseLinearOps(state, policy=lambda rows, group: "dense").project(
        x, linear.weight.detach(), None, 0, MLP_IN, 0)
    for got in (hf, engine, kernels):
        assert torch.allclose(got, expected, rtol=0, atol=1e-6)


def test_groups_sum_into_their_halves_and_each_half_closes_with_its_output_group():
    per_group = torch.tensor([[1.0, 2.0, 4.0, 8.0], [16.0, 32.0, 64.0, 128.0]])  # [L, 4]
    assert groups_to_halves(per_group).tolist() == [[3.0, 12.0], [48.0, 192.0]]
    assert [GROUP_NAMES[CLOSING_GROUP[h]] for h in (ATTENTION, MLP)] == ["attn_out", "mlp_out"]
    assert all(HALF_OF_GROUP[CLOSING_GROUP[h]] == h for h in (ATTENTION, MLP))


def test_the_width_sparsity_meets_the_budget_on_top_of_the_depth_plan():
    half_bytes = [(100, 300), (100, 300)]
    depth = ((True, False), (True, True))  # layer 0's MLP skipped: 500 of 800 bytes still read
    assert kept_fraction(depth, half_bytes) == pytest.approx(500 / 800)
    assert kept_fraction(None, half_bytes) == 1.0
    # bytes read = width-kept share of the depth-kept bytes: (1 - 0.2) * 500 / 800 = 0.5
    assert width_sparsity(0.5, depth, half_bytes) == pytest.approx(0.2)
    assert width_sparsity(1.0, None, half_bytes) == 0.0
    assert width_sparsity(0.01, None, half_bytes) == 0.95  # capped: some channels always stay
    assert width_sparsity(0.5, ((False, False), (False, False)), half_bytes) == 0.0
