"""The listed kernel (one kept-channel list per input vector, no split-K fix-up) computes the
gating contract exactly.

Runs in Triton's CPU interpreter in CI (small shapes) and on a GPU where one is present (`gpu`).
Fresh random inputs each run, output poisoned with NaN, compared with the float64 masked reference.
"""

from __future__ import annotations

import pytest
import torch

from dynasparse_worker.kernels import (
    KernelConfig,
    SplitKWorkspace,
    keep_mask,
    masked_reference,
    pack_projection,
)
from dynasparse_worker.kernels.configs import listed_config

ONE = KernelConfig(block_n=32, block_k=16, split_k=1, listed=True)  # several column blocks
SPLIT = KernelConfig(block_n=32, block_k=16, split_k=3, listed=True)  # fp32 atomics, then a cast


def _weights(gen, outs, k, device):
    return [(torch.randn(n, k, generator=gen) / k**0.5).to(torch.bfloat16).to(device) for n in outs]


def _x(gen, rows, k, device):
    return torch.randn(rows, k, generator=gen).to(torch.bfloat16).to(device)  # [B, K]


def _run(kernels, x, pw, thr, scale=None, config=ONE):
    out = torch.full((x.shape[0], pw.out_features), float("nan"), dtype=x.dtype, device=x.device)
    kernels.sparse_matmul_triton(x, pw, thr, scale, out=out, config=config)
    assert not out.isnan().any(), "an output element was never written"
    return out


def _rel_err(y, ref):
    return float((y.double() - ref).norm() / ref.norm())


@pytest.mark.parametrize("config", [ONE, SPLIT], ids=["columns-only", "atomic-splits"])
@pytest.mark.parametrize("rows", [1, 5])
def test_fused_qkv_matches_masked_reference_with_column_scale(triton_kernels, device, gen, rows,
                                                              config):
    k = 80
    ws = SplitKWorkspace.allocate(device, max_batch=8, max_out=256)
    pw = pack_projection(_weights(gen, [48, 16, 16], k, device), workspace=ws)  # q|k|v, ragged
    x = _x(gen, rows, k, device)
    scale = (0.5 + torch.rand(k, generator=gen)).to(device)
    thr = torch.tensor(0.6, device=device)
    y = _run(triton_kernels, x, pw, thr, scale, config)
    assert _rel_err(y, masked_reference(x, pw, thr, scale)) < 1e-2, gen.initial_seed()
    assert int(ws.accum.count_nonzero()) == 0, "the atomic sums must be cleared for the next call"
    kept = int(keep_mask(x, thr, scale).any(0).sum())
    assert int(ws.row_counts[0]) == kept, "the list holds exactly the batch's kept channels"


@pytest.mark.parametrize("rows", [1, 3])
def test_gated_group_returns_silu_of_gate_times_up_even_when_splits_are_asked(
        triton_kernels, device, gen, rows):
    k = 64
    ws = SplitKWorkspace.allocate(device, max_batch=4, max_out=128)
    pw = pack_projection(_weights(gen, [64, 64], k, device), gated=True, workspace=ws)
    x = _x(gen, rows, k, device)
    thr = torch.tensor(0.5, device=device)
    y = _run(triton_kernels, x, pw, thr, config=SPLIT)  # SiLU needs whole sums: no split
    assert y.shape == (rows, 64)
    assert _rel_err(y, masked_reference(x, pw, thr)) < 1e-2, gen.initial_seed()


def test_each_token_keeps_only_its_own_channels_whatever_the_batch(triton_kernels, device, gen):
    k = 64
    ws = SplitKWorkspace.allocate(device, max_batch=4, max_out=64)
    pw = pack_projection(_weights(gen, [64], k, device), workspace=ws)
    x = _x(gen, 4, k, device)
    thr = torch.tensor(0.7, device=device)
    ref = masked_reference(x, pw, thr)
    assert _rel_err(_run(triton_kernels, x, pw, thr), ref) < 1e-2, gen.initial_seed()
    alone = _run(triton_kernels, x[2:3].contiguous(), pw, thr)
    assert _rel_err(alone, ref[2:3]) < 1e-2, gen.initial_seed()


def test_a_threshold_changed_in_place_is_read_by_the_next_call(triton_kernels, device, gen):
    k = 96
    ws = SplitKWorkspace.allocate(device, max_batch=2, max_out=64)
    pw = pack_projection(_weights(gen, [64], k, device), workspace=ws)
    x = _x(gen, 1, k, device)
    thr = torch.tensor(0.2, device=device)
    _run(triton_kernels, x, pw, thr)
    thr.fill_(1.1)  # what set_budget does between graph replays
    y = _run(triton_kernels, x, pw, thr)
    assert _rel_err(y, masked_reference(x, pw, thr)) < 1e-2, gen.initial_seed()


def test_every_channel_skipped_gives_zeros_and_no_channel_skipped_gives_the_dense_product(
        triton_kernels, device, gen):
    k = 48
    ws = SplitKWorkspace.allocate(device, max_batch=2, max_out=64)
    pw = pack_projection(_weights(gen, [64], k, device), workspace=ws)
    x = _x(gen, 2, k, device)
    assert _run(triton_kernels, x, pw, torch.tensor(1e9, device=device)).abs().max() == 0
    y = _run(triton_kernels, x, pw, torch.tensor(-1.0, device=device))
    assert _rel_err(y, x.double() @ pw.w_t.double()) < 1e-2, gen.initial_seed()


def test_listed_configs_give_every_multiprocessor_a_program_and_never_split_gated_groups():
    from dynasparse_worker.kernels.configs import SM_COUNT

    for batch in (1, 32):
        for n_out, gated in ((6144, False), (4096, False), (14336, True)):
            cfg = listed_config(batch, n_out, gated)
            assert cfg.listed and cfg.dot == (batch > 1)
            if gated:
                assert cfg.split_k == 1
            else:
                assert -(-n_out // cfg.block_n) * cfg.split_k >= SM_COUNT * 3 // 4, (batch, n_out, cfg)


def test_a_norm_that_writes_the_list_lets_the_kernel_skip_its_own_listing(triton_kernels, device,
                                                                          gen):
    from dynasparse_worker.engine import fused

    if device == "cpu" and type(fused._add_rms_norm_kernel).__name__ != "InterpretedFunction":
        pytest.skip("engine.fused was imported before TRITON_INTERPRET was set")
    k = 96
    ws = SplitKWorkspace.allocate(device, max_batch=2, max_out=128)
    pw = pack_projection(_weights(gen, [64, 32, 32], k, device), workspace=ws)
    x, delta = _x(gen, 1, k, device), _x(gen, 1, k, device)
    norm_w = (0.5 + torch.rand(k, generator=gen)).to(torch.bfloat16).to(device)
    scale = (0.5 + torch.rand(k, generator=gen)).to(device)
    thr = torch.tensor(0.7, device=device)
    ws.rows.fill_(-1)
    h, _ = fused.add_rms_norm(delta, x, norm_w, 1e-5, use_triton=True,
                              gate=(thr, scale, ws.rows, ws.row_counts[:1]))
    keep = keep_mask(h, thr, scale)[0]  # [K]
    count = int(ws.row_counts[0])
    assert count == int(keep.sum()) and 0 < count < k
    assert torch.equal(ws.rows[:count].long().cpu(), keep.nonzero()[:, 0].cpu())
    y = torch.full((1, pw.out_features), float("nan"), dtype=h.dtype, device=device)
    triton_kernels.sparse_matmul_triton(h, pw, thr, scale, out=y, config=ONE, prelisted=True)
    assert _rel_err(y, masked_reference(h, pw, thr, scale)) < 1e-2, gen.initial_seed()
    ws.row_counts[0] = 0  # the kernel reads the norm's count: an empty list gives zeros
    triton_kernels.sparse_matmul_triton(h, pw, thr, scale, out=y, config=ONE, prelisted=True)
    assert y.abs().max() == 0


def test_a_norm_refuses_to_list_channels_for_a_batch():
    from dynasparse_worker.engine import fused

    x = torch.randn(2, 16)
    gate = (torch.tensor(0.5), None, torch.zeros(16, dtype=torch.int32),
            torch.zeros(1, dtype=torch.int32))
    with pytest.raises(ValueError, match="one row"):
        fused.add_rms_norm(None, x, torch.ones(16), 1e-5, gate=gate)
