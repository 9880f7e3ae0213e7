"""Compacting variant of the input-sparse matmul: list the kept rows first, then read only those.

Called by `triton_sparse.sparse_matmul_triton` when the launch config has `compact=True`; the GPU
suite sweeps it beside the predicated kernel. Not yet measured on a GPU (see issue 4's notes).

Why: the predicated kernel (`triton_sparse`) skips a row's bytes but still spends the load,
convert and FMA instructions of every skipped row; on the H200 a launch with every row skipped
still cost half of dense. Here the work scales with the kept rows:

1. `_compact_rows_kernel`, grid `(slices,)`: per slice of `SLICE` input channels, the union keep
   mask of the batch, its prefix sum, and a scatter of the kept channel indices into
   `workspace.rows[slice * SLICE:]`, with the count in `workspace.row_counts[slice]`;
2. `_gathered_kernel`, grid `(column blocks, slices)`: loops over `ceil(count / BLOCK_K)` blocks
   of gathered indices only (indices two blocks ahead, weight rows one block ahead), re-applies
   each token's own mask to its gathered x, and finishes through the same split-K fix-up.
"""

from __future__ import annotations

import triton
import triton.language as tl

from dynasparse_worker.kernels.triton_sparse import _accumulate, _finish, _load_x


@triton.jit
def _compact_rows_kernel(x_ptr, scale_ptr, thr_ptr, rows_ptr, count_ptr, B, K, stride_xb,
                         HAS_SCALE: tl.constexpr, BLOCK_B: tl.constexpr, SLICE: tl.constexpr):
    pid = tl.program_id(0)
    thr = tl.load(thr_ptr)
    offs = tl.arange(0, SLICE)
    k0 = pid * SLICE
    any_row = offs < 0  # [SLICE] all False
    for b0 in range(0, B, BLOCK_B):  # the union over the batch, BLOCK_B tokens at a time
        offs_b = b0 + tl.arange(0, BLOCK_B)
        _, rows = _load_x(x_ptr, scale_ptr, thr, offs_b, offs_b < B, k0, K, stride_xb,
                          HAS_SCALE, SLICE)
        any_row = any_row | rows
    flags = any_row.to(tl.int32)  # [SLICE]
    pos = tl.cumsum(flags, axis=0) - 1  # where each kept row lands in the list
    tl.store(rows_ptr + k0 + pos, k0 + offs, mask=any_row)
    tl.store(count_ptr + pid, tl.sum(flags, axis=0))


@triton.jit
def _load_gathered(x_ptr, scale_ptr, thr, list_ptr, count, j, offs_b, b_ok, stride_xb,
                   HAS_SCALE: tl.constexpr, BLOCK_K: tl.constexpr):
    """Block `j` of the kept-row list: masked x `[BB, BK]`, row indices `[BK]`, validity `[BK]`."""
    offs = j + tl.arange(0, BLOCK_K)
    valid = offs < count
    idx = tl.load(list_ptr + offs, mask=valid, other=0)  # [BK] kept channel indices
    x = tl.load(x_ptr + offs_b[:, None] * stride_xb + idx[None, :],
                mask=b_ok[:, None] & valid[None, :], other=0.0)  # [BB, BK]
    score = tl.abs(x.to(tl.float32))
    if HAS_SCALE:
        score = score * tl.load(scale_ptr + idx, mask=valid, other=0.0)[None, :]
    keep = (score > thr) & valid[None, :]  # each token's own channels only
    return tl.where(keep, x, tl.zeros_like(x)), idx, valid


@triton.jit
def _load_gathered_w(w_ptr, idx, valid, offs_n, n_ok, stride_wk, N_OUT,
                     GATED: tl.constexpr, EVEN_N: tl.constexpr):
    if EVEN_N:
        w_mask = valid[:, None]
    else:
        w_mask = valid[:, None] & n_ok[None, :]
    w_ptrs = w_ptr + idx[:, None] * stride_wk + offs_n[None, :]
    w_a = tl.load(w_ptrs, mask=w_mask, other=0.0)  # [BK, BN] kept rows only
    if GATED:
        w_b = tl.load(w_ptrs + N_OUT, mask=w_mask, other=0.0)
    else:
        w_b = w_a
    return w_a, w_b


@triton.jit
def _gathered_kernel(
    x_ptr, w_ptr, out_ptr, thr_ptr, scale_ptr, rows_ptr, count_ptr, part_ptr, cnt_ptr,
    B, N_OUT, stride_xb, stride_wk, stride_ob, split_k,
    HAS_SCALE: tl.constexpr, GATED: tl.constexpr, SPLIT: tl.constexpr, EVEN_N: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, SLICE: tl.constexpr,
    UPCAST: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_b = tl.arange(0, BLOCK_B)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    b_ok = offs_b < B
    n_ok = offs_n < N_OUT
    thr = tl.load(thr_ptr)
    count = tl.load(count_ptr + pid_k)
    list_ptr = rows_ptr + pid_k * SLICE
    if BLOCK_B == 1:
        acc_a = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
        acc_b = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    else:
        acc_a = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
        acc_b = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    xm_c, idx_c, ok_c = _load_gathered(x_ptr, scale_ptr, thr, list_ptr, count, 0, offs_b, b_ok,
                                       stride_xb, HAS_SCALE, BLOCK_K)
    w_ca, w_cb = _load_gathered_w(w_ptr, idx_c, ok_c, offs_n, n_ok, stride_wk, N_OUT,
                                  GATED, EVEN_N)
    xm_n, idx_n, ok_n = _load_gathered(x_ptr, scale_ptr, thr, list_ptr, count, BLOCK_K, offs_b,
                                       b_ok, stride_xb, HAS_SCALE, BLOCK_K)
    for j in range(0, count, BLOCK_K):
        w_na, w_nb = _load_gathered_w(w_ptr, idx_n, ok_n, offs_n, n_ok, stride_wk, N_OUT,
                                      GATED, EVEN_N)
        xm_nn, idx_nn, ok_nn = _load_gathered(x_ptr, scale_ptr, thr, list_ptr, count,
                                              j + 2 * BLOCK_K, offs_b, b_ok, stride_xb,
                                              HAS_SCALE, BLOCK_K)
        acc_a = _accumulate(acc_a, xm_c, w_ca, BLOCK_B, UPCAST)
        if GATED:
            acc_b = _accumulate(acc_b, xm_c, w_cb, BLOCK_B, UPCAST)
        xm_c = xm_n
        w_ca = w_na
        w_cb = w_nb
        xm_n = xm_nn
        idx_n = idx_nn
        ok_n = ok_nn
    if BLOCK_B == 1:
        acc_a = tl.sum(acc_a, axis=0)[None, :]  # [1, BN]
        acc_b = tl.sum(acc_b, axis=0)[None, :]
    _finish(acc_a, acc_b, out_ptr, part_ptr, cnt_ptr, offs_b, offs_n, b_ok, n_ok, pid_n, pid_k,
            B, N_OUT, stride_ob, split_k, GATED, SPLIT, True, BLOCK_B, BLOCK_N)


def launch_compact(x, pw, threshold, scale, has_scale, out, cfg, block_b, upcast) -> None:
    """Both kernels of one call; `pw.workspace` must have been allocated with `max_in`."""
    rows, k = x.shape
    ws = pw.workspace
    n_out = pw.out_features
    slice_ = max(cfg.block_k, triton.next_power_of_2(triton.cdiv(k, max(1, cfg.split_k))))
    n_slices = triton.cdiv(k, slice_)
    n_blocks = triton.cdiv(n_out, cfg.block_n)
    width = pw.w_t.shape[1]
    if (ws.rows is None or ws.rows.numel() < n_slices * slice_
            or ws.row_counts.numel() < n_slices or n_blocks > ws.counters.numel()
            or ws.partials.numel() < n_slices * rows * width):
        raise ValueError("workspace too small for a compact launch: allocate it with max_in")
    _compact_rows_kernel[(n_slices,)](
        x, scale, threshold, ws.rows, ws.row_counts, rows, k, x.stride(0),
        HAS_SCALE=has_scale, BLOCK_B=min(block_b, 16), SLICE=slice_,
    )
    split = n_slices > 1
    _gathered_kernel[(n_blocks, n_slices)](
        x, pw.w_t, out, threshold, scale, ws.rows, ws.row_counts, ws.partials, ws.counters,
        rows, n_out, x.stride(0), pw.w_t.stride(0), out.stride(0), n_slices,
        HAS_SCALE=has_scale, GATED=pw.gated, SPLIT=split, EVEN_N=(n_out % cfg.block_n == 0),
        BLOCK_B=block_b, BLOCK_K=cfg.block_k, BLOCK_N=cfg.block_n, SLICE=slice_, UPCAST=upcast,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
