"""Triton input-sparse decode matmul: `y = (x masked by |x|·col_scale > threshold) @ W_t`.

Called through `dynasparse_worker.kernels.linear` by the engine's model runner on CUDA (and by the
tests under `TRITON_INTERPRET=1` on the CPU). Imported lazily: CPU-only code never loads it.

Design (split-K with an in-kernel fix-up):

* grid `(column blocks, K splits)`; each program owns `BLOCK_N` output columns and one slice of
  the input channels. Per `BLOCK_K` rows it loads the batch's `x` block, computes the keep mask
  per token (`|x|·s > thr`, thr read from device memory) and the union over the batch, and loads
  weight rows only where the union keeps them (a predicated-off row issues no memory request).
* per-token semantics: each token's own masked `x` multiplies the rows, so the result equals the
  dense masked reference whatever the batch composition.
* the loop is software-pipelined by hand: the next block's weight rows and the block after's x
  are loaded before the current block is accumulated, so loads stay in flight;
* B == 1 multiplies elementwise into a `[BLOCK_K, BLOCK_N]` fp32 accumulator reduced once at the
  end; larger batches pad to 16/32/64 rows and use `tl.dot` (fp32 accumulation in both);
* split-K partial sums go to a shared float32 scratch; the last program to arrive at a column
  block (an acq_rel arrival counter) sums them, applies the epilogue (bf16 cast, or
  `silu(gate) * up` for gated groups) and resets the counter: one launch per projection group.
  `fixup=False` instead reduces in a second small kernel (kept as a measured alternative).

Measured (H200, NOTES.md): correct everywhere, but the cost of a skipped row is not zero: with
every row skipped a launch still takes 33 us for gate|up (62 us dense), because each
predicated-off row still costs its load, convert and FMA instructions. The default is the
compacting kernel (`KernelConfig(compact=True)`, `triton_compact`), whose work follows the kept
rows; `listed=True` runs `triton_listed` (one list per input vector, no split-K fix-up), measured
slower than the compacting kernel on the H200 (kernels/NOTES.md). This kernel stays for
`pick_config(..., predicated=True)` and workspaces without row lists.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dynasparse_worker.kernels.configs import KernelConfig, pick_config
from dynasparse_worker.kernels.layout import PackedWeight

MAX_BLOCK_B = 64


@triton.jit
def _accumulate(acc, xm, w, BLOCK_B: tl.constexpr, UPCAST: tl.constexpr):
    if BLOCK_B == 1:  # elementwise FMA into a [BK, BN] accumulator, reduced once at the end
        acc = acc + tl.trans(xm).to(tl.float32) * w.to(tl.float32)  # [BK, BN]
    elif UPCAST:  # the CPU interpreter's bf16 dot is wrong (triton 3.9): same math in fp32
        acc = tl.dot(xm.to(tl.float32), w.to(tl.float32), acc)
    else:
        acc = tl.dot(xm, w, acc)  # [BB, BN]
    return acc


@triton.jit
def _store_result(out_ptr, acc_a, acc_b, offs_b, offs_n, mask, stride_ob, GATED: tl.constexpr):
    if GATED:
        y = acc_a / (1.0 + tl.exp(-acc_a)) * acc_b  # silu(gate) * up, fp32
    else:
        y = acc_a
    ptrs = out_ptr + offs_b[:, None] * stride_ob + offs_n[None, :]
    tl.store(ptrs, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _load_x(x_ptr, scale_ptr, thr, offs_b, b_ok, k0, k_end, stride_xb,
            HAS_SCALE: tl.constexpr, BLOCK_K: tl.constexpr):
    """Masked x block `[BB, BK]` (per-token keep) and the rows the batch needs `[BK]`."""
    offs_k = k0 + tl.arange(0, BLOCK_K)
    k_ok = offs_k < k_end
    x_ptrs = x_ptr + offs_b[:, None] * stride_xb + offs_k[None, :]
    x = tl.load(x_ptrs, mask=b_ok[:, None] & k_ok[None, :], other=0.0)  # [BB, BK]
    score = tl.abs(x.to(tl.float32))
    if HAS_SCALE:
        score = score * tl.load(scale_ptr + offs_k, mask=k_ok, other=0.0)[None, :]
    keep = score > thr  # [BB, BK] per token
    xm = tl.where(keep, x, tl.zeros_like(x))
    rows = (tl.max(keep.to(tl.int32), axis=0) > 0) & k_ok  # [BK] union over the batch
    return xm, rows


@triton.jit
def _load_rows(w_ptr, row_idx, row_ok, offs_n, n_ok, stride_wk, N_OUT,
               GATED: tl.constexpr, EVEN_N: tl.constexpr):
    """Weight rows `w_t[row_idx, offs_n]` `[BK, BN]` (and the up half for gated groups); rows
    where `row_ok` is false are never read. Shared with the compacted kernel (triton_compact)."""
    if EVEN_N:
        w_mask = row_ok[:, None]
    else:
        w_mask = row_ok[:, None] & n_ok[None, :]
    w_ptrs = w_ptr + row_idx[:, None] * stride_wk + offs_n[None, :]
    w_a = tl.load(w_ptrs, mask=w_mask, other=0.0)  # [BK, BN]
    if GATED:
        w_b = tl.load(w_ptrs + N_OUT, mask=w_mask, other=0.0)  # [BK, BN] up half, same rows
    else:
        w_b = w_a
    return w_a, w_b


@triton.jit
def _load_w(w_ptr, rows, k0, offs_n, n_ok, stride_wk, N_OUT,
            GATED: tl.constexpr, EVEN_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The contiguous block of rows starting at `k0`; skipped rows are never read."""
    offs_k = k0 + tl.arange(0, BLOCK_K)
    return _load_rows(w_ptr, offs_k, rows, offs_n, n_ok, stride_wk, N_OUT, GATED, EVEN_N)


@triton.jit
def _input_sparse_kernel(
    x_ptr, w_ptr, out_ptr, thr_ptr, scale_ptr, part_ptr, cnt_ptr,
    B, K, N_OUT, stride_xb, stride_wk, stride_ob, k_per_split, split_k,
    HAS_SCALE: tl.constexpr, GATED: tl.constexpr, SPLIT: tl.constexpr, FIXUP: tl.constexpr,
    EVEN_N: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
    UPCAST: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_b = tl.arange(0, BLOCK_B)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    b_ok = offs_b < B
    n_ok = offs_n < N_OUT
    thr = tl.load(thr_ptr)  # device scalar: changing it needs no re-compile or re-capture
    if BLOCK_B == 1:  # no cross-thread reduction inside the loop
        acc_a = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
        acc_b = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    else:
        acc_a = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
        acc_b = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    k_start = pid_k * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    # software pipeline: W one step ahead, x two steps ahead, so each step's weight loads are
    # in flight while the previous step computes (a plain loop waits x -> W every step)
    xm_c, rows_c = _load_x(x_ptr, scale_ptr, thr, offs_b, b_ok, k_start, k_end, stride_xb,
                           HAS_SCALE, BLOCK_K)
    w_ca, w_cb = _load_w(w_ptr, rows_c, k_start, offs_n, n_ok, stride_wk, N_OUT,
                         GATED, EVEN_N, BLOCK_K)
    xm_n, rows_n = _load_x(x_ptr, scale_ptr, thr, offs_b, b_ok, k_start + BLOCK_K, k_end,
                           stride_xb, HAS_SCALE, BLOCK_K)
    for k0 in range(k_start, k_end, BLOCK_K):
        w_na, w_nb = _load_w(w_ptr, rows_n, k0 + BLOCK_K, offs_n, n_ok, stride_wk, N_OUT,
                             GATED, EVEN_N, BLOCK_K)
        xm_nn, rows_nn = _load_x(x_ptr, scale_ptr, thr, offs_b, b_ok, k0 + 2 * BLOCK_K, k_end,
                                 stride_xb, HAS_SCALE, BLOCK_K)
        acc_a = _accumulate(acc_a, xm_c, w_ca, BLOCK_B, UPCAST)
        if GATED:
            acc_b = _accumulate(acc_b, xm_c, w_cb, BLOCK_B, UPCAST)
        xm_c = xm_n
        w_ca = w_na
        w_cb = w_nb
        xm_n = xm_nn
        rows_n = rows_nn
    if BLOCK_B == 1:
        acc_a = tl.sum(acc_a, axis=0)[None, :]  # [1, BN]
        acc_b = tl.sum(acc_b, axis=0)[None, :]

    _finish(acc_a, acc_b, out_ptr, part_ptr, cnt_ptr, offs_b, offs_n, b_ok, n_ok, pid_n, pid_k,
            B, N_OUT, stride_ob, split_k, GATED, SPLIT, FIXUP, BLOCK_B, BLOCK_N)


@triton.jit
def _finish(acc_a, acc_b, out_ptr, part_ptr, cnt_ptr, offs_b, offs_n, b_ok, n_ok, pid_n, pid_k,
            B, N_OUT, stride_ob, split_k, GATED: tl.constexpr, SPLIT: tl.constexpr,
            FIXUP: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
    """Store the result, or this split's partial sums and, for the last to arrive, their total."""
    bn_mask = b_ok[:, None] & n_ok[None, :]
    if SPLIT:
        width = N_OUT * 2 if GATED else N_OUT
        p_off = offs_b[:, None] * width + offs_n[None, :]  # [BB, BN]
        tl.store(part_ptr + pid_k * B * width + p_off, acc_a, mask=bn_mask)
        if GATED:
            tl.store(part_ptr + pid_k * B * width + p_off + N_OUT, acc_b, mask=bn_mask)
        if FIXUP:
            tl.debug_barrier()  # every thread's partial is written before the arrival
            arrived = tl.atomic_add(cnt_ptr + pid_n, 1, sem="acq_rel", scope="gpu")
            if arrived == split_k - 1:
                acc_a = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
                acc_b = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
                for s in range(0, split_k):
                    ptrs = part_ptr + s * B * width + p_off
                    acc_a += tl.load(ptrs, mask=bn_mask, other=0.0, cache_modifier=".cg")
                    if GATED:
                        acc_b += tl.load(ptrs + N_OUT, mask=bn_mask, other=0.0, cache_modifier=".cg")
                _store_result(out_ptr, acc_a, acc_b, offs_b, offs_n, bn_mask, stride_ob, GATED)
                tl.atomic_xchg(cnt_ptr + pid_n, 0)  # ready for the next call
    else:
        _store_result(out_ptr, acc_a, acc_b, offs_b, offs_n, bn_mask, stride_ob, GATED)


@triton.jit
def _reduce_partials_kernel(
    part_ptr, out_ptr, B, N_OUT, stride_ob, split_k,
    GATED: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_n = tl.program_id(0)
    offs_b = tl.arange(0, BLOCK_B)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (offs_b < B)[:, None] & (offs_n < N_OUT)[None, :]
    width = N_OUT * 2 if GATED else N_OUT
    p_off = offs_b[:, None] * width + offs_n[None, :]  # [BB, BN]
    acc_a = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    for s in range(0, split_k):
        acc_a += tl.load(part_ptr + s * B * width + p_off, mask=mask, other=0.0)
        if GATED:
            acc_b += tl.load(part_ptr + s * B * width + p_off + N_OUT, mask=mask, other=0.0)
    _store_result(out_ptr, acc_a, acc_b, offs_b, offs_n, mask, stride_ob, GATED)


def _block_b(rows: int) -> int:
    return 1 if rows == 1 else max(16, triton.next_power_of_2(rows))


def sparse_matmul_triton(
    x: torch.Tensor,
    pw: PackedWeight,
    threshold: torch.Tensor,
    col_scale: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    config: KernelConfig | None = None,
    fixup: bool = True,
    prelisted: bool = False,
) -> torch.Tensor:
    """`x [B, in]` -> `[B, out_features]` in x's dtype; threshold is a one-element device tensor."""
    if not isinstance(threshold, torch.Tensor) or threshold.numel() != 1:
        raise TypeError("threshold must be a one-element device tensor (a view into `thresholds`)")
    rows, k = x.shape
    if k != pw.in_features or x.stride(1) != 1:
        raise ValueError(f"x must be [B, {pw.in_features}] with unit stride along channels")
    n_out = pw.out_features
    if out is None:
        out = torch.empty((rows, n_out), dtype=x.dtype, device=x.device)  # [B, N]
    scale = col_scale if col_scale is not None else threshold
    for r0 in range(0, rows, MAX_BLOCK_B):  # batches over 64 rows: one launch per 64-row slice
        r1 = min(rows, r0 + MAX_BLOCK_B)
        _launch(x[r0:r1], pw, threshold, scale, col_scale is not None, out[r0:r1], config, fixup,
                prelisted and rows <= MAX_BLOCK_B)
    return out


def _launch(x, pw, threshold, scale, has_scale, out, config, fixup, prelisted=False) -> None:
    rows, k = x.shape
    n_out = pw.out_features
    ws = pw.workspace
    has_lists = ws is not None and ws.rows is not None and ws.rows.numel() >= k
    if config is None:  # the compacting kernel wherever the workspace holds row lists
        config = pick_config(rows, k, n_out, pw.gated, predicated=not has_lists)
    cfg = config
    if cfg.listed and has_lists:
        from dynasparse_worker.kernels.triton_listed import launch_listed

        launch_listed(x, pw, threshold, scale, has_scale, out, cfg, x.device.type == "cpu",
                      prelisted)
        return
    if cfg.compact and ws is not None and ws.rows is not None and ws.rows.numel() >= k:
        from dynasparse_worker.kernels.triton_compact import launch_compact

        launch_compact(x, pw, threshold, scale, has_scale, out, cfg, x.device.type == "cpu")
        return
    n_blocks = triton.cdiv(n_out, cfg.block_n)
    split = max(1, min(cfg.split_k, triton.cdiv(k, cfg.block_k)))
    ws = pw.workspace
    width = pw.w_t.shape[1]
    if ws is None or n_blocks > ws.counters.numel():
        split = 1
    else:
        split = max(1, min(split, ws.partials.numel() // (rows * width)))
    k_per_split = triton.cdiv(triton.cdiv(k, split), cfg.block_k) * cfg.block_k
    split = triton.cdiv(k, k_per_split)
    use_split = split > 1
    part = ws.partials if use_split else out
    cnt = ws.counters if use_split else threshold
    block_b = _block_b(rows)
    _input_sparse_kernel[(n_blocks, split)](
        x, pw.w_t, out, threshold, scale, part, cnt,
        rows, k, n_out, x.stride(0), pw.w_t.stride(0), out.stride(0), k_per_split, split,
        HAS_SCALE=has_scale, GATED=pw.gated, SPLIT=use_split, FIXUP=fixup,
        EVEN_N=(n_out % cfg.block_n == 0), BLOCK_B=block_b, BLOCK_K=cfg.block_k,
        BLOCK_N=cfg.block_n, UPCAST=x.device.type == "cpu",
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    if use_split and not fixup:
        _reduce_partials_kernel[(triton.cdiv(n_out, 128),)](
            part, out, rows, n_out, out.stride(0), split,
            GATED=pw.gated, BLOCK_B=block_b, BLOCK_N=128,
        )
