"""The CPU sparse path, the dense path and the dispatch honour the same gating contract.

`sparse_matmul_torch` (embedding_bag over kept rows) is what the demo and the e2e tests run; it
must equal the float64 masked reference for any batch, and never touch a skipped row.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dynasparse_worker.kernels import (
    dense_matmul,
    keep_mask,
    linear,
    masked_reference,
    pack_projection,
    sparse_matmul_torch,
    split_outputs,
)

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def _rel_err(y, ref):
    return float((y.double() - ref).norm() / ref.norm())


def _group(gen, outs, k, dtype, gated=False):
    ws = [(torch.randn(n, k, generator=gen) / k**0.5).to(dtype) for n in outs]
    return ws, pack_projection(ws, gated=gated)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 4])
def test_cpu_sparse_path_matches_masked_reference(gen, dtype, rows):
    _, pw = _group(gen, [96, 32, 32], 128, dtype)
    x = torch.randn(rows, 128, generator=gen).to(dtype)  # [B, K]
    scale = 0.5 + torch.rand(128, generator=gen)
    thr = torch.tensor(0.7)
    y = sparse_matmul_torch(x, pw, thr, scale)
    assert y.dtype == dtype and y.shape == (rows, 160)
    assert _rel_err(y, masked_reference(x, pw, thr, scale)) < TOL[dtype], gen.initial_seed()


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_token_split_into_a_bag_per_thread_sums_to_the_masked_reference(gen, dtype, threads):
    _, pw = _group(gen, [96, 32], 512, dtype)
    x = torch.randn(1, 512, generator=gen).to(dtype)  # [1, K]: ~250 kept rows, several bags
    thr = torch.tensor(0.7)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y = sparse_matmul_torch(x, pw, thr)
    finally:
        torch.set_num_threads(before)
    assert _rel_err(y, masked_reference(x, pw, thr)) < TOL[dtype], gen.initial_seed()


def test_cpu_gated_group_returns_silu_of_gate_times_up(gen):
    (gate, up), pw = _group(gen, [64, 64], 48, torch.float32, gated=True)
    x = torch.randn(3, 48, generator=gen)
    thr = torch.tensor(0.0)  # keeps every nonzero channel: the plain dense MLP input
    y = sparse_matmul_torch(x, pw, thr)
    expected = F.silu(x @ gate.t()) * (x @ up.t())
    assert _rel_err(y, expected.double()) < 1e-5


def test_cpu_sparse_path_never_reads_a_skipped_row(gen):
    _, pw = _group(gen, [64], 96, torch.float32)
    x = torch.randn(2, 96, generator=gen)
    thr = torch.tensor(0.9)
    ref = masked_reference(x, pw, thr)
    pw.w_t[~keep_mask(x, thr).any(dim=0)] = float("nan")  # a read would poison the output
    assert _rel_err(sparse_matmul_torch(x, pw, thr), ref) < 1e-5, gen.initial_seed()


def test_a_token_with_no_kept_channel_gets_zeros(gen):
    _, pw = _group(gen, [16], 32, torch.float32)
    x = torch.randn(2, 32, generator=gen)
    x[1] = 0.01
    y = sparse_matmul_torch(x, pw, torch.tensor(0.5))
    assert torch.equal(y[1], torch.zeros(16))
    assert y[0].abs().sum() > 0


def test_keep_mask_is_strict_and_scaled():
    x = torch.tensor([[0.5, -1.0, 2.0, 0.0]])
    scale = torch.tensor([2.0, 1.0, 0.25, 5.0])
    # scores 1.0, 1.0, 0.5, 0.0 against threshold 1.0: only strictly greater is kept
    assert keep_mask(x, torch.tensor(1.0), scale).tolist() == [[False, False, False, False]]
    assert keep_mask(x, torch.tensor(0.99), scale).tolist() == [[True, True, False, False]]
    assert keep_mask(x, torch.tensor(0.0)).tolist() == [[True, True, True, False]]


@pytest.mark.parametrize("gated", [False, True])
def test_dense_mode_masks_like_sparse_mode_and_zero_threshold_is_dense(gen, gated):
    ws, pw = _group(gen, [32, 32], 64, torch.float32, gated=gated)
    x = torch.randn(2, 64, generator=gen)
    thr = torch.tensor(0.6)
    sparse = linear(x, pw, thr, mode="sparse")
    dense = linear(x, pw, thr, mode="dense")
    assert _rel_err(dense, sparse.double()) < 1e-5
    unmasked = dense_matmul(x, pw)
    assert _rel_err(linear(x, pw, torch.tensor(0.0), mode="sparse"), unmasked.double()) < 1e-5
    out = torch.full_like(sparse, float("nan"))
    assert linear(x, pw, thr, out=out) is out and not out.isnan().any()


def test_fused_outputs_split_back_into_each_projection(gen):
    (q, k, v), pw = _group(gen, [24, 8, 8], 40, torch.float32)
    x = torch.randn(3, 40, generator=gen)
    yq, yk, yv = split_outputs(pw, dense_matmul(x, pw))
    for y, w in ((yq, q), (yk, k), (yv, v)):
        assert torch.allclose(y, x @ w.t(), atol=1e-5)


def test_packing_rejects_mismatched_inputs_and_unequal_gate_up():
    with pytest.raises(ValueError):
        pack_projection([torch.zeros(4, 8), torch.zeros(4, 6)])
    with pytest.raises(ValueError):
        pack_projection([torch.zeros(4, 8), torch.zeros(6, 8)], gated=True)
    with pytest.raises(ValueError):
        pack_projection([])


@pytest.mark.parametrize("gated", [False, True])
def test_bf16_packed_weights_serve_fp32_activations_on_both_paths(gen, gated):
    weights = [torch.randn(48, 64, generator=gen) / 8 for _ in range(2)]
    pw = pack_projection(weights, gated=gated, dtype=torch.bfloat16)
    assert pw.w_t.dtype == torch.bfloat16 and pw.w_t.is_contiguous()
    x = torch.randn(3, 64, generator=gen)  # [B, K] fp32
    thr = torch.tensor(0.5)
    ref = masked_reference(x, pw, thr)
    for mode in ("sparse", "dense"):
        y = linear(x, pw, thr, mode=mode)
        assert y.dtype == torch.float32
        assert _rel_err(y, ref) < 1e-2, (mode, gen.initial_seed())
