"""Listed input-sparse matmul (v4): one kept-channel list per input vector, then a GEMV over it.

Called by `triton_sparse.sparse_matmul_triton` when the launch config has `listed=True`, and swept
by `scripts/gpu/kernels_v4.py` beside the compacting kernel (`triton_compact`) and cuBLAS.

Why: the compacting kernel made the work follow the kept rows, but every program still walked a
chain of dependent global round trips before and after its stream (threshold -> x slice -> list
store + barrier -> indices ..., then partials -> release fence + arrival atomic -> the last
program re-reads them), ~7 us per launch measured on the H200, half the time of the small groups.
Here:

1. `build_kept_list` runs once per input vector (one program: the batch's union keep mask over
   all `in` channels, a prefix sum, the kept indices into `workspace.rows`, the count into
   `workspace.row_counts[0]`), right where the input is produced, so no GEMV program lists rows;
2. the GEMV grid is `(column blocks, splits)`; each program starts with one load of the count,
   then streams its share of the list: indices, gathered x (one token: the list *is* its keep
   set, no threshold needed; a batch re-applies each token's own mask), weight rows
   `w_t[idx, n0:n0 + BLOCK_N]`;
3. no split-K fix-up: with `split == 1` (the default, narrow column blocks give enough programs)
   each program stores its final columns with the epilogue (bf16 cast, or SiLU·up for gate|up);
   with `split > 1` (un-gated groups only) programs add fp32 partials into
   `workspace.accum` (zero between calls) with atomics and one small launch casts and clears them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dynasparse_worker.kernels.triton_compact import _build_list
from dynasparse_worker.kernels.triton_sparse import _load_rows, _store_result

LIST_CHUNK = 4096  # channels scanned per prefix-sum step of the list kernel


@triton.jit
def _kept_list_kernel(x_ptr, scale_ptr, thr_ptr, list_ptr, count_ptr, B, K, stride_xb,
                      HAS_SCALE: tl.constexpr, BLOCK_BU: tl.constexpr, CHUNK: tl.constexpr):
    count = _build_list(x_ptr, scale_ptr, tl.load(thr_ptr), list_ptr, B, 0, K, stride_xb,
                        HAS_SCALE, BLOCK_BU, CHUNK)
    tl.store(count_ptr, count)


@triton.jit
def _gather(x_ptr, scale_ptr, thr, list_ptr, j, j_end, offs_b, b_ok, stride_xb,
            HAS_SCALE: tl.constexpr, RECHECK: tl.constexpr, BLOCK_K: tl.constexpr):
    """Block `j` of the list: x `[BB, BK]` (each token's own mask when RECHECK), indices, validity."""
    offs = j + tl.arange(0, BLOCK_K)
    valid = offs < j_end
    idx = tl.load(list_ptr + offs, mask=valid, other=0)  # [BK] kept channel indices
    x = tl.load(x_ptr + offs_b[:, None] * stride_xb + idx[None, :],
                mask=b_ok[:, None] & valid[None, :], other=0.0)  # [BB, BK]
    if RECHECK:  # a batch: the list is the union, each token keeps only its own channels
        score = tl.abs(x.to(tl.float32))
        if HAS_SCALE:
            score = score * tl.load(scale_ptr + idx, mask=valid, other=0.0)[None, :]
        x = tl.where(score > thr, x, tl.zeros_like(x))
    return x, idx, valid


@triton.jit
def _listed_gemv_kernel(
    x_ptr, w_ptr, out_ptr, thr_ptr, scale_ptr, list_ptr, count_ptr, acc_ptr,
    B, N_OUT, stride_xb, stride_wk, stride_ob,
    SPLIT: tl.constexpr, HAS_SCALE: tl.constexpr, GATED: tl.constexpr, EVEN_N: tl.constexpr,
    DOT: tl.constexpr, RECHECK: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr, UPCAST: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_b = tl.arange(0, BLOCK_B)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    b_ok = offs_b < B
    n_ok = offs_n < N_OUT
    count = tl.load(count_ptr)  # the one dependent load before the stream starts
    per = tl.cdiv(tl.cdiv(count, SPLIT), BLOCK_K) * BLOCK_K
    j0 = pid_s * per
    j_end = tl.minimum(j0 + per, count)
    if RECHECK:
        thr = tl.load(thr_ptr)  # device scalar: a new budget needs no re-capture
    else:
        thr = 0.0  # one token: the list is exactly its kept channels
    if DOT:
        acc_a = tl.zeros((BLOCK_N, BLOCK_B), dtype=tl.float32)
        acc_b = tl.zeros((BLOCK_N, BLOCK_B), dtype=tl.float32)
        for j in range(j0, j_end, BLOCK_K):
            xm, idx, ok = _gather(x_ptr, scale_ptr, thr, list_ptr, j, j_end, offs_b, b_ok,
                                  stride_xb, HAS_SCALE, RECHECK, BLOCK_K)
            w_a, w_b = _load_rows(w_ptr, idx, ok, offs_n, n_ok, stride_wk, N_OUT, GATED, EVEN_N)
            xt = tl.trans(xm)  # [BK, BB]
            if UPCAST:  # the CPU interpreter's bf16 dot is wrong: the same math in fp32
                acc_a = tl.dot(tl.trans(w_a).to(tl.float32), xt.to(tl.float32), acc_a)
                if GATED:
                    acc_b = tl.dot(tl.trans(w_b).to(tl.float32), xt.to(tl.float32), acc_b)
            else:
                acc_a = tl.dot(tl.trans(w_a), xt, acc_a)  # [BN, BB]
                if GATED:
                    acc_b = tl.dot(tl.trans(w_b), xt, acc_b)
        res_a = tl.trans(acc_a)  # [BB, BN]
        res_b = tl.trans(acc_b)
    else:  # one token (BLOCK_B == 1): elementwise FMA, weights one block ahead
        acc_a = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
        acc_b = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
        x_c, idx_c, ok_c = _gather(x_ptr, scale_ptr, thr, list_ptr, j0, j_end, offs_b, b_ok,
                                   stride_xb, HAS_SCALE, RECHECK, BLOCK_K)
        w_ca, w_cb = _load_rows(w_ptr, idx_c, ok_c, offs_n, n_ok, stride_wk, N_OUT, GATED, EVEN_N)
        for j in range(j0, j_end, BLOCK_K):
            x_n, idx_n, ok_n = _gather(x_ptr, scale_ptr, thr, list_ptr, j + BLOCK_K, j_end,
                                       offs_b, b_ok, stride_xb, HAS_SCALE, RECHECK, BLOCK_K)
            w_na, w_nb = _load_rows(w_ptr, idx_n, ok_n, offs_n, n_ok, stride_wk, N_OUT, GATED,
                                    EVEN_N)
            xt = tl.trans(x_c).to(tl.float32)  # [BK, 1]
            acc_a += xt * w_ca.to(tl.float32)
            if GATED:
                acc_b += xt * w_cb.to(tl.float32)
            x_c = x_n
            w_ca = w_na
            w_cb = w_nb
        res_a = tl.sum(acc_a, axis=0)[None, :]  # [1, BN]
        res_b = tl.sum(acc_b, axis=0)[None, :]
    mask = b_ok[:, None] & n_ok[None, :]
    if SPLIT == 1:
        _store_result(out_ptr, res_a, res_b, offs_b, offs_n, mask, stride_ob, GATED)
    else:  # fp32 partial sums, added in any order; `_cast_clear_kernel` finishes
        tl.atomic_add(acc_ptr + offs_b[:, None] * N_OUT + offs_n[None, :], res_a, mask=mask,
                      sem="relaxed")


@triton.jit
def _cast_clear_kernel(acc_ptr, out_ptr, B, N_OUT, stride_ob, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < N_OUT
    y = tl.load(acc_ptr + row * N_OUT + offs, mask=ok, other=0.0)
    tl.store(out_ptr + row * stride_ob + offs, y.to(out_ptr.dtype.element_ty), mask=ok)
    tl.store(acc_ptr + row * N_OUT + offs, tl.zeros_like(y), mask=ok)  # zero for the next call


def build_kept_list(x: torch.Tensor, threshold: torch.Tensor, scale: torch.Tensor,
                    has_scale: bool, rows_out: torch.Tensor, count_out: torch.Tensor) -> None:
    """The union kept-channel list of `x [B, in]` into `rows_out[:count]`, its count into
    `count_out[0]` (device values: no host sync, graph-capturable)."""
    rows, k = x.shape
    chunk = min(triton.next_power_of_2(k), LIST_CHUNK)
    block_bu = max(1, min(triton.next_power_of_2(rows), 16, 8192 // chunk))
    _kept_list_kernel[(1,)](x, scale, threshold, rows_out, count_out, rows, k, x.stride(0),
                            HAS_SCALE=has_scale, BLOCK_BU=block_bu, CHUNK=chunk,
                            num_warps=8 if chunk >= 2048 else 4)


def launch_listed(x, pw, threshold, scale, has_scale, out, cfg, upcast,
                  prelisted: bool = False) -> None:
    """List, then GEMV (and a cast for `split > 1`); needs `workspace.rows` of `>= in`.
    `prelisted`: the producer of x already wrote the list (`engine.fused.add_rms_norm`)."""
    rows, k = x.shape
    ws = pw.workspace
    n_out = pw.out_features
    if ws is None or ws.rows is None or ws.rows.numel() < k or ws.row_counts is None:
        raise ValueError("workspace too small for a listed launch: allocate it with max_in")
    split = 1 if pw.gated else max(1, cfg.split_k)  # SiLU·up needs whole sums: never split
    if split > 1 and (ws.accum is None or ws.accum.numel() < rows * n_out):
        split = 1
    count = ws.row_counts[:1]
    if not prelisted:
        build_kept_list(x, threshold, scale, has_scale, ws.rows, count)
    dot = cfg.dot or rows > 1
    block_b = max(16, triton.next_power_of_2(rows)) if dot else 1
    n_blocks = triton.cdiv(n_out, cfg.block_n)
    _listed_gemv_kernel[(n_blocks, split)](
        x, pw.w_t, out, threshold, scale, ws.rows, count,
        ws.accum if split > 1 else out,
        rows, n_out, x.stride(0), pw.w_t.stride(0), out.stride(0),
        SPLIT=split, HAS_SCALE=has_scale, GATED=pw.gated, EVEN_N=(n_out % cfg.block_n == 0),
        DOT=dot, RECHECK=rows > 1, BLOCK_B=block_b, BLOCK_K=cfg.block_k, BLOCK_N=cfg.block_n, UPCAST=upcast,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    if split > 1:
        block = min(1024, triton.next_power_of_2(n_out))
        _cast_clear_kernel[(rows, triton.cdiv(n_out, block))](ws.accum, out, rows, n_out,
                                                              out.stride(0), BLOCK=block)
