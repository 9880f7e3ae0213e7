"""The Triton input-sparse kernel computes the gating contract exactly, reading only kept rows.

Runs in Triton's CPU interpreter in CI (small shapes) and on a GPU where one is present (`gpu`).
Every check draws fresh random inputs, poisons the output with NaN, and compares with the float64
masked reference `(x * keep) @ W_t` by relative error (bf16 output: under 1e-2).
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

SMALL = KernelConfig(block_n=32, block_k=16, split_k=3)  # several column blocks and K splits
COMPACT = KernelConfig(block_n=32, block_k=16, split_k=3, compact=True)  # list kept rows first
COMPACT_DOT = KernelConfig(block_n=32, block_k=16, split_k=3, compact=True, dot=True)
TWO_LAUNCH = KernelConfig(block_n=32, block_k=16, split_k=3, compact=True, fused=False)


def _weights(gen, outs, k, device, dtype=torch.bfloat16):
    return [(torch.randn(n, k, generator=gen) / k**0.5).to(dtype).to(device) for n in outs]


def _x(gen, rows, k, device):
    return torch.randn(rows, k, generator=gen).to(torch.bfloat16).to(device)  # [B, K]


def _run(kernels, x, pw, thr, scale=None, config=SMALL, fixup=True):
    out = torch.full((x.shape[0], pw.out_features), float("nan"), dtype=x.dtype, device=x.device)
    kernels.sparse_matmul_triton(x, pw, thr, scale, out=out, config=config, fixup=fixup)
    assert not out.isnan().any(), "an output element was never written"
    return out


def _rel_err(y, ref):
    return float((y.double() - ref).norm() / ref.norm())


@pytest.mark.parametrize("rows", [1, 5])
def test_fused_qkv_matches_masked_reference_with_column_scale(triton_kernels, device, gen, rows):
    k = 80
    ws = SplitKWorkspace.allocate(device, max_batch=8, max_out=256)
    pw = pack_projection(_weights(gen, [48, 16, 16], k, device), workspace=ws)  # q|k|v, ragged 80
    x = _x(gen, rows, k, device)
    scale = (0.5 + torch.rand(k, generator=gen)).to(device)
    thr = torch.tensor(0.6, device=device)
    y = _run(triton_kernels, x, pw, thr, scale)
    assert _rel_err(y, masked_reference(x, pw, thr, scale)) < 1e-2, gen.initial_seed()
    assert int(ws.counters.abs().sum()) == 0, "split-K arrival counters must return to zero"


def test_gated_group_returns_silu_of_gate_times_up(triton_kernels, device, gen):
    k = 64
    ws = SplitKWorkspace.allocate(device, max_batch=4, max_out=128)
    pw = pack_projection(_weights(gen, [64, 64], k, device), gated=True, workspace=ws)
    x = _x(gen, 3, k, device)
    thr = torch.tensor(0.5, device=device)
    y = _run(triton_kernels, x, pw, thr)
    assert y.shape == (3, 64)
    assert _rel_err(y, masked_reference(x, pw, thr)) < 1e-2, gen.initial_seed()


def test_each_token_keeps_only_its_own_channels_whatever_the_batch(triton_kernels, device, gen):
    k = 64
    ws = SplitKWorkspace.allocate(device, max_batch=4, max_out=64)
    pw = pack_projection(_weights(gen, [64], k, device), workspace=ws)
    x = _x(gen, 4, k, device)
    thr = torch.tensor(0.7, device=device)
    batched = _run(triton_kernels, x, pw, thr)  # tl.dot path over the batch's union of rows
    alone = _run(triton_kernels, x[2:3].contiguous(), pw, thr)  # single-token path
    ref = masked_reference(x, pw, thr)
    assert _rel_err(batched, ref) < 1e-2, gen.initial_seed()
    assert _rel_err(alone, ref[2:3]) < 1e-2, gen.initial_seed()


@pytest.mark.parametrize("config", [SMALL, COMPACT, COMPACT_DOT],
                         ids=["predicated", "compact", "compact-dot"])
def test_skipped_weight_rows_are_never_read(triton_kernels, device, gen, config):
    k = 64
    w = _weights(gen, [64], k, device)[0]  # [N, K]
    x = _x(gen, 2, k, device)
    thr = torch.tensor(0.8, device=device)
    skipped = ~keep_mask(x, thr).any(dim=0)  # channels no token keeps
    assert skipped.any()
    ws = SplitKWorkspace.allocate(device, max_batch=2, max_out=64, max_in=k)
    pw_clean = pack_projection([w])
    pw = pack_projection([w], workspace=ws)
    pw.w_t[skipped] = float("nan")  # a read of any skipped row would turn the output NaN
    y = _run(triton_kernels, x, pw, thr, config=config)
    assert _rel_err(y, masked_reference(x, pw_clean, thr)) < 1e-2, gen.initial_seed()


@pytest.mark.parametrize("rows,gated,config", [
    (1, True, COMPACT), (1, False, COMPACT_DOT), (18, False, COMPACT), (3, True, TWO_LAUNCH)],
    ids=["fma-gated", "dot-one-token", "dot-batch", "two-launch"])
def test_compacting_variant_matches_reference_over_several_slices(triton_kernels, device, gen,
                                                                  rows, gated, config):
    k = 96
    ws = SplitKWorkspace.allocate(device, max_batch=rows, max_out=128, max_in=k)
    pw = pack_projection(_weights(gen, [48, 48] if gated else [40, 24], k, device), gated=gated,
                         workspace=ws)
    x = _x(gen, rows, k, device)  # 18 rows: the union is built 16 tokens at a time
    scale = (0.5 + torch.rand(k, generator=gen)).to(device)
    thr = torch.tensor(0.7, device=device)
    y = _run(triton_kernels, x, pw, thr, scale, config=config)
    assert _rel_err(y, masked_reference(x, pw, thr, scale)) < 1e-2, gen.initial_seed()
    assert int(ws.counters.abs().sum()) == 0


@pytest.mark.parametrize("fused", [True, False], ids=["one-launch", "two-launch"])
def test_compacting_variant_lists_a_long_slice_in_several_chunks(triton_kernels, device, gen,
                                                                  fused):
    k = 600  # one slice of 600 channels, listed 256 at a time for a batch of 18
    ws = SplitKWorkspace.allocate(device, max_batch=18, max_out=64, max_in=k)
    pw = pack_projection(_weights(gen, [32], k, device), workspace=ws)
    x = _x(gen, 18, k, device)
    x[:, 100:400] *= 0.1  # a run of mostly skipped channels
    thr = torch.tensor(1.2, device=device)
    config = KernelConfig(block_n=32, block_k=64, split_k=1, compact=True, fused=fused)
    y = _run(triton_kernels, x, pw, thr, config=config)
    assert _rel_err(y, masked_reference(x, pw, thr)) < 1e-2, gen.initial_seed()


def test_compacting_variant_splits_no_further_than_its_scratch_holds(triton_kernels, device, gen):
    k = 96
    ws = SplitKWorkspace.allocate(device, max_batch=1, max_out=48, max_split=2, max_in=k)
    pw = pack_projection(_weights(gen, [48], k, device), workspace=ws)
    x = _x(gen, 3, k, device)  # 3 rows x 48 columns: room for one partial sum only
    thr = torch.tensor(0.5, device=device)
    y = _run(triton_kernels, x, pw, thr, config=COMPACT)  # asks for 3 K slices
    assert _rel_err(y, masked_reference(x, pw, thr)) < 1e-2, gen.initial_seed()


def test_compacting_variant_writes_zeros_when_every_row_is_skipped(triton_kernels, device, gen):
    k = 64
    ws = SplitKWorkspace.allocate(device, max_batch=2, max_out=64, max_in=k)
    pw = pack_projection(_weights(gen, [32], k, device), workspace=ws)
    x = _x(gen, 2, k, device)
    thr = torch.tensor(1e9, device=device)  # an empty kept list: zero loop trips everywhere
    for config in (COMPACT, COMPACT_DOT):
        assert torch.equal(_run(triton_kernels, x[:1].contiguous(), pw, thr, config=config),
                           torch.zeros(1, 32, dtype=x.dtype, device=device))
    assert torch.equal(_run(triton_kernels, x, pw, thr, config=COMPACT),
                       torch.zeros(2, 32, dtype=x.dtype, device=device))


def test_threshold_is_read_from_device_memory_at_every_call(triton_kernels, device, gen):
    k = 48
    pw = pack_projection(_weights(gen, [32], k, device))
    x = _x(gen, 1, k, device)
    thresholds = torch.zeros(2, 3, device=device)  # stands in for SparsityState.thresholds
    for value in (0.0, 0.9, 1.6):
        thresholds[1, 2].fill_(value)  # in place, as set_budget does
        y = _run(triton_kernels, x, pw, thresholds[1, 2])
        ref = masked_reference(x, pw, torch.tensor(value))
        assert _rel_err(y, ref) < 1e-2, (value, gen.initial_seed())
    with pytest.raises(TypeError):
        triton_kernels.sparse_matmul_triton(x, pw, 0.5)


def test_two_kernel_reduction_and_unsplit_launch_agree_with_reference(triton_kernels, device, gen):
    k = 64
    ws = SplitKWorkspace.allocate(device, max_batch=2, max_out=64)
    pw = pack_projection(_weights(gen, [64], k, device), workspace=ws)
    x = _x(gen, 1, k, device)
    thr = torch.tensor(0.4, device=device)
    ref = masked_reference(x, pw, thr)
    assert _rel_err(_run(triton_kernels, x, pw, thr, fixup=False), ref) < 1e-2
    pw.workspace = None  # no scratch: one program per column block walks all of K
    assert _rel_err(_run(triton_kernels, x, pw, thr), ref) < 1e-2, gen.initial_seed()


@pytest.mark.gpu
def test_llama_sized_groups_match_reference_inside_a_cuda_graph(triton_kernels, device, gen):
    if device != "cuda":
        pytest.skip("large shapes and CUDA graphs run on the GPU only")
    ws = SplitKWorkspace.allocate(device, max_batch=16, max_out=2 * 4096)
    for outs, gated, k in (([4096, 1024, 1024], False, 4096), ([4096, 4096], True, 4096),
                           ([4096], False, 8192)):
        pw = pack_projection(_weights(gen, outs, k, device), gated=gated, workspace=ws)
        for rows in (1, 16):
            x = _x(gen, rows, k, device)
            thr = torch.zeros((), device=device)
            out = torch.empty(rows, pw.out_features, dtype=torch.bfloat16, device=device)
            triton_kernels.sparse_matmul_triton(x, pw, thr, out=out)  # compile outside capture
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                triton_kernels.sparse_matmul_triton(x, pw, thr, out=out)
            for value in (0.3, 1.0):
                thr.fill_(value)
                out.fill_(float("nan"))
                graph.replay()
                torch.cuda.synchronize()
                assert _rel_err(out, masked_reference(x, pw, thr)) < 1e-2, (outs, rows, value)


def test_fused_input_mask_zeroes_exactly_the_channels_under_threshold(device, gen, triton_kernels):
    from dynasparse_worker.kernels.triton_mask import mask_input_triton

    x = _x(gen, 3, 1100, device)  # two blocks along K, the second ragged
    scale = (0.5 + torch.rand(1100, generator=gen)).to(device)
    thr = torch.tensor(0.8, device=device)
    out = torch.full_like(x, float("nan"))
    mask_input_triton(x, thr, scale, out=out)
    expected = torch.where(keep_mask(x, thr, scale), x, torch.zeros_like(x))
    assert torch.equal(out, expected)
