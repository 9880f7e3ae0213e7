"""Compacting input-sparse matmul: list the kept rows, then read and multiply only those.

Called by `triton_sparse.sparse_matmul_triton` when the launch config has `compact=True` (the
default for measured shapes, see `configs.TUNED`), and swept by `scripts/gpu/kernels_suite.py`.

Why: the predicated kernel (`triton_sparse`) skips a row's bytes but still spends the load,
convert and FMA instructions and the loop trip of every skipped row; on the H200 a launch with
every row skipped still cost 60 % of dense. Here the loop trip count is the number of kept rows,
so the work, not only the bytes, scales with 1 - sparsity.

One launch, grid `(column blocks, K slices)` (`fused=True`, the default):

1. each program builds its slice's kept-row list itself: the batch's union keep mask over the
   slice's `x`, a prefix sum (`tl.cumsum`), a scatter of the kept channel indices into
   `workspace.rows[k0:]`, and a CTA barrier. Every program of one slice writes the same values
   to the same addresses, so the list needs no cross-program ordering; the count stays in a
   register (no host round trip, no re-capture: the trip count is read on the device);
2. it then loops over `ceil(count / BLOCK_K)` blocks of that list, gathering `x[:, idx]` (each
   token's own mask re-applied) and the weight rows `w_t[idx, n0:n0 + BLOCK_N]` (contiguous
   along the output, full-width loads), and finishes through `triton_sparse._finish` (split-K
   partials plus an acq_rel arrival counter; the last program applies the epilogue).

Inner products: one token (`BLOCK_B == 1`, `dot=False`) multiplies elementwise into a `[BK, BN]`
fp32 accumulator with the weight one block ahead (manual prefetch); batches (or `dot=True`)
compute `W^T x^T` with `tl.dot` ("swap AB": the output columns are the dot's M, the batch padded
to 16 its N) in a plain loop that Triton's pipeliner (`num_stages`) overlaps.

`fused=False` keeps the earlier two-launch form (`_compact_rows_kernel` writes lists and counts,
the GEMV reads them), for comparison on the device.
"""

from __future__ import annotations

import triton
import triton.language as tl

from dynasparse_worker.kernels.triton_sparse import _finish, _load_rows, _load_x


@triton.jit
def _build_list(x_ptr, scale_ptr, thr, list_ptr, B, k0, k_end, stride_xb,
                HAS_SCALE: tl.constexpr, BLOCK_BU: tl.constexpr, CHUNK: tl.constexpr):
    """Kept channels of `[k0, k_end)` (union over the batch) written to `list_ptr`; their count.

    The slice is scanned `CHUNK` channels at a time (a `[BLOCK_BU, CHUNK]` x tile stays small in
    registers); each chunk's prefix sum is offset by the count so far.
    """
    count = k0 - k0  # int32 scalar, loop-carried
    offs = tl.arange(0, CHUNK)
    for c0 in range(k0, k_end, CHUNK):
        any_row = offs < 0  # [CHUNK] all False
        for b0 in range(0, B, BLOCK_BU):  # the union, BLOCK_BU tokens at a time
            offs_b = b0 + tl.arange(0, BLOCK_BU)
            _, rows = _load_x(x_ptr, scale_ptr, thr, offs_b, offs_b < B, c0, k_end, stride_xb,
                              HAS_SCALE, CHUNK)
            any_row = any_row | rows
        flags = any_row.to(tl.int32)  # [CHUNK]
        pos = count + tl.cumsum(flags, axis=0) - 1  # where each kept channel lands in the list
        tl.store(list_ptr + pos, c0 + offs, mask=any_row)
        count += tl.sum(flags, axis=0)
    return count


@triton.jit
def _compact_rows_kernel(x_ptr, scale_ptr, thr_ptr, rows_ptr, count_ptr, B, K, slice_len,
                         stride_xb, HAS_SCALE: tl.constexpr, BLOCK_BU: tl.constexpr,
                         CHUNK: tl.constexpr):
    pid = tl.program_id(0)
    k0 = pid * slice_len
    k_end = tl.minimum(k0 + slice_len, K)
    count = _build_list(x_ptr, scale_ptr, tl.load(thr_ptr), rows_ptr + k0, B, k0, k_end,
                        stride_xb, HAS_SCALE, BLOCK_BU, CHUNK)
    tl.store(count_ptr + pid, count)


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
def _fma_loop(x_ptr, w_ptr, scale_ptr, thr, list_ptr, count, offs_b, b_ok, offs_n, n_ok,
              stride_xb, stride_wk, N_OUT, HAS_SCALE: tl.constexpr, GATED: tl.constexpr,
              EVEN_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    """One token: `[BK, BN]` elementwise accumulators, weights one block ahead. -> 2 x `[1, BN]`."""
    acc_a = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    xm_c, idx_c, ok_c = _load_gathered(x_ptr, scale_ptr, thr, list_ptr, count, 0, offs_b, b_ok,
                                       stride_xb, HAS_SCALE, BLOCK_K)
    w_ca, w_cb = _load_rows(w_ptr, idx_c, ok_c, offs_n, n_ok, stride_wk, N_OUT,
                                  GATED, EVEN_N)
    for j in range(0, count, BLOCK_K):
        xm_n, idx_n, ok_n = _load_gathered(x_ptr, scale_ptr, thr, list_ptr, count, j + BLOCK_K,
                                           offs_b, b_ok, stride_xb, HAS_SCALE, BLOCK_K)
        w_na, w_nb = _load_rows(w_ptr, idx_n, ok_n, offs_n, n_ok, stride_wk, N_OUT,
                                      GATED, EVEN_N)
        xt = tl.trans(xm_c).to(tl.float32)  # [BK, 1]
        acc_a += xt * w_ca.to(tl.float32)
        if GATED:
            acc_b += xt * w_cb.to(tl.float32)
        xm_c = xm_n
        w_ca = w_na
        w_cb = w_nb
    return tl.sum(acc_a, axis=0)[None, :], tl.sum(acc_b, axis=0)[None, :]  # [1, BN] each


@triton.jit
def _dot_loop(x_ptr, w_ptr, scale_ptr, thr, list_ptr, count, offs_b, b_ok, offs_n, n_ok,
              stride_xb, stride_wk, N_OUT, HAS_SCALE: tl.constexpr, GATED: tl.constexpr,
              EVEN_N: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
              BLOCK_N: tl.constexpr, UPCAST: tl.constexpr):
    """Batch: `acc[BN, BB] += W[idx, n]^T @ x[:, idx]^T` per block of kept rows. -> 2 x `[BB, BN]`."""
    acc_a = tl.zeros((BLOCK_N, BLOCK_B), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_N, BLOCK_B), dtype=tl.float32)
    for j in range(0, count, BLOCK_K):
        xm, idx, ok = _load_gathered(x_ptr, scale_ptr, thr, list_ptr, count, j, offs_b, b_ok,
                                     stride_xb, HAS_SCALE, BLOCK_K)
        w_a, w_b = _load_rows(w_ptr, idx, ok, offs_n, n_ok, stride_wk, N_OUT,
                                    GATED, EVEN_N)
        xt = tl.trans(xm)  # [BK, BB]
        if UPCAST:  # the CPU interpreter's bf16 dot is wrong (triton 3.9): same math in fp32
            acc_a = tl.dot(tl.trans(w_a).to(tl.float32), xt.to(tl.float32), acc_a)
            if GATED:
                acc_b = tl.dot(tl.trans(w_b).to(tl.float32), xt.to(tl.float32), acc_b)
        else:
            acc_a = tl.dot(tl.trans(w_a), xt, acc_a)  # [BN, BB]
            if GATED:
                acc_b = tl.dot(tl.trans(w_b), xt, acc_b)
    return tl.trans(acc_a), tl.trans(acc_b)  # [BB, BN] each


@triton.jit
def _gathered_kernel(
    x_ptr, w_ptr, out_ptr, thr_ptr, scale_ptr, rows_ptr, count_ptr, part_ptr, cnt_ptr,
    B, K, N_OUT, slice_len, stride_xb, stride_wk, stride_ob, split_k,
    HAS_SCALE: tl.constexpr, GATED: tl.constexpr, SPLIT: tl.constexpr, EVEN_N: tl.constexpr,
    FUSED: tl.constexpr, DOT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr, CHUNK: tl.constexpr, BLOCK_BU: tl.constexpr, UPCAST: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_b = tl.arange(0, BLOCK_B)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    b_ok = offs_b < B
    n_ok = offs_n < N_OUT
    thr = tl.load(thr_ptr)  # device scalar: a new budget needs no re-compile or re-capture
    k0 = pid_k * slice_len
    list_ptr = rows_ptr + k0
    if FUSED:
        count = _build_list(x_ptr, scale_ptr, thr, list_ptr, B, k0, tl.minimum(k0 + slice_len, K),
                            stride_xb, HAS_SCALE, BLOCK_BU, CHUNK)
        tl.debug_barrier()  # the whole list is written before any thread reads it
    else:
        count = tl.load(count_ptr + pid_k)
    if DOT:
        acc_a, acc_b = _dot_loop(x_ptr, w_ptr, scale_ptr, thr, list_ptr, count, offs_b, b_ok,
                                 offs_n, n_ok, stride_xb, stride_wk, N_OUT, HAS_SCALE, GATED,
                                 EVEN_N, BLOCK_B, BLOCK_K, BLOCK_N, UPCAST)
    else:
        acc_a, acc_b = _fma_loop(x_ptr, w_ptr, scale_ptr, thr, list_ptr, count, offs_b, b_ok,
                                 offs_n, n_ok, stride_xb, stride_wk, N_OUT, HAS_SCALE, GATED,
                                 EVEN_N, BLOCK_K, BLOCK_N)
    _finish(acc_a, acc_b, out_ptr, part_ptr, cnt_ptr, offs_b, offs_n, b_ok, n_ok, pid_n, pid_k,
            B, N_OUT, stride_ob, split_k, GATED, SPLIT, True, BLOCK_B, BLOCK_N)


def launch_compact(x, pw, threshold, scale, has_scale, out, cfg, upcast) -> None:
    """One call (one launch, or two with `cfg.fused=False`); needs `workspace.rows` of `>= in`."""
    rows, k = x.shape
    ws = pw.workspace
    n_out = pw.out_features
    dot = cfg.dot or rows > 1
    block_b = max(16, triton.next_power_of_2(rows)) if dot else 1
    width = pw.w_t.shape[1]
    split = max(1, min(cfg.split_k, triton.cdiv(k, cfg.block_k),
                       ws.partials.numel() // (rows * width)))  # what the scratch holds
    slice_len = triton.cdiv(triton.cdiv(k, split), 16) * 16  # rows per K slice
    n_slices = triton.cdiv(k, slice_len)
    n_blocks = triton.cdiv(n_out, cfg.block_n)
    if (ws.rows is None or ws.rows.numel() < k or ws.row_counts.numel() < n_slices
            or n_blocks > ws.counters.numel()):
        raise ValueError("workspace too small for a compact launch: allocate it with max_in")
    # listing tile [BU, CHUNK] of at most 8192 elements: the whole slice in one chunk where it
    # fits (each chunk is a serial load -> prefix sum -> store step), tokens BU at a time
    chunk = min(triton.next_power_of_2(slice_len), 4096)
    block_bu = max(1, min(triton.next_power_of_2(rows), 16, 8192 // chunk))
    if not cfg.fused:
        _compact_rows_kernel[(n_slices,)](
            x, scale, threshold, ws.rows, ws.row_counts, rows, k, slice_len, x.stride(0),
            HAS_SCALE=has_scale, BLOCK_BU=block_bu, CHUNK=chunk,
        )
    _gathered_kernel[(n_blocks, n_slices)](
        x, pw.w_t, out, threshold, scale, ws.rows, ws.row_counts, ws.partials, ws.counters,
        rows, k, n_out, slice_len, x.stride(0), pw.w_t.stride(0), out.stride(0), n_slices,
        HAS_SCALE=has_scale, GATED=pw.gated, SPLIT=n_slices > 1,
        EVEN_N=(n_out % cfg.block_n == 0), FUSED=cfg.fused, DOT=dot, BLOCK_B=block_b,
        BLOCK_K=cfg.block_k, BLOCK_N=cfg.block_n, CHUNK=chunk, BLOCK_BU=block_bu,
        UPCAST=upcast,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
