"""The crossover table sends each batch to the faster path, and launch configs are well formed."""

from __future__ import annotations

import pytest

from dynasparse_worker.kernels import choose, crossover
from dynasparse_worker.kernels.configs import (
    TUNED,
    TUNED_PREDICATED,
    batch_bucket,
    block_rows,
    pick_config,
)


def test_single_token_goes_sparse_only_above_its_measured_crossover():
    edge = crossover(1)
    assert 0.0 < edge < 1.0
    assert choose(1, edge + 0.05) == "sparse"
    assert choose(1, edge - 0.05) == "dense"


def test_batches_where_width_sparsity_never_paid_stay_dense():
    assert crossover(32) > 1.0
    assert choose(32, 0.95) == "dense"
    assert choose(10_000, 0.99) == "dense"  # beyond the last bucket


def test_qkv_needs_the_most_sparsity_at_batch_one_where_its_fixed_cost_weighs_most():
    assert crossover(1, group="attn_in") == max(crossover(1, group=g)
                                                for g in ("attn_in", "attn_out", "mlp_in", "mlp_out"))
    assert choose(1, 0.5, group="mlp_out") == "sparse"
    assert choose(1, 0.5, group="attn_in") == "dense"
    assert choose(1, 0.25, group="mlp_in") == "dense"  # measured in the engine: 0.78x at 25 %


def test_small_groups_fall_back_dense_first_as_the_batch_grows():
    assert crossover(16, group="attn_in") > 1.0  # q|k|v never paid at 16 rows
    assert choose(16, 0.5, group="mlp_in") == "sparse"
    assert crossover(4, group="attn_out") > crossover(2, group="attn_out")


@pytest.mark.parametrize("batch,bucket", [(1, 1), (3, 4), (8, 8), (9, 16), (40, 16)])
def test_batches_take_the_config_measured_for_their_bucket(batch, bucket):
    assert batch_bucket(batch) == bucket
    assert pick_config(batch, 14336, 4096, False) is TUNED[(bucket, 14336, 4096, False)]


def test_cpu_table_is_separate_and_falls_dense_for_big_batches():
    assert choose(1, 0.5, device_type="cpu") == "sparse"
    assert choose(1, 0.05, device_type="cpu") == "dense"
    assert choose(64, 0.9, device_type="cpu") == "dense"


@pytest.mark.parametrize("batch,expected", [(1, 1), (2, 16), (16, 16), (17, 32), (40, 64), (99, 64)])
def test_block_rows_pads_batches_for_tl_dot(batch, expected):
    assert block_rows(batch) == expected


@pytest.mark.parametrize("batch,k,n,gated", [(1, 576, 960, False), (4, 1536, 576, False),
                                             (1, 576, 1536, True), (32, 8192, 28672, True)])
def test_untuned_shapes_get_a_split_that_fits_the_input(batch, k, n, gated):
    cfg = pick_config(batch, k, n, gated)
    assert cfg.block_n in (32, 64, 128, 256) and cfg.block_k in (16, 32, 64, 128, 256)
    assert 1 <= cfg.split_k <= max(1, k // (2 * cfg.block_k))


def test_tuned_shapes_come_from_the_measured_table():
    for table, predicated in ((TUNED, False), (TUNED_PREDICATED, True)):
        for key, cfg in table.items():
            assert pick_config(*key, predicated=predicated) is cfg


def test_compacting_kernel_is_the_default_and_predicated_stays_selectable():
    assert pick_config(1, 4096, 4096, False).compact
    assert not pick_config(1, 4096, 4096, False, predicated=True).compact
