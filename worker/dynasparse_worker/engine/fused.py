"""Fused elementwise steps of the decoder forward: add+RMSNorm, RoPE+KV-cache write, SiLU·up.

Gemma's (1 + weight) RMSNorm has only the torch form (`offset_rms_norm_torch`), which CUDA graphs
capture like any other op; the Llama path's kernels are untouched by it.

At decode the matrix products are few and large, but a plain torch forward launches ~40 small
kernels per layer (norm, rope, slicing, cache scatter), which at batch 1 costs as much as the weights
take to read. These Triton kernels do each step in one launch, rounding exactly where the Hugging
Face forward rounds (so bf16 outputs agree); on the CPU (or without Triton) the same functions run
the torch reference. Called by `DecoderModel.forward`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None


def _triton_ok(t: Tensor, use_triton: bool | None) -> bool:
    """Auto (None): Triton on CUDA tensors; tests force True on the CPU under TRITON_INTERPRET=1."""
    return (t.is_cuda if use_triton is None else use_triton) and triton is not None


# -- torch references (the CPU path) -------------------------------------------------------------
def rms_norm_torch(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    if x.dtype == torch.float32 and weight.dtype == torch.float32:
        return F.rms_norm(x, weight.shape, weight, eps)  # one op; the same arithmetic in float32
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def offset_rms_norm_torch(x: Tensor, scale32: Tensor, eps: float) -> Tensor:
    """Gemma's RMSNorm: normalised *and* scaled in float32, by `scale32` = 1 + weight (float32,
    precomputed at load), then rounded once to x's dtype — where Llama rounds before the weight."""
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps) * scale32).to(x.dtype)


def rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


# -- public steps -----------------------------------------------------------------------------------
def add_rms_norm(delta: Tensor | None, residual: Tensor, weight: Tensor, eps: float,
                 use_triton: bool | None = None, gate: tuple | None = None) -> tuple[Tensor, Tensor]:
    """residual += delta (if given); return (rms_norm(residual) * weight, residual). [N, hidden].

    `gate` = (threshold [], column scale [hidden] or None, list [>= hidden] int32, count [1]
    int32), one row on the Triton path only: the kernel's epilogue also writes the kept-channel
    list of its output (`|y|·scale > threshold`, ascending) and its count, which the consumer's
    listed sparse kernel then reads instead of listing the channels itself."""
    if gate is not None and (residual.shape[0] != 1 or not _triton_ok(residual, use_triton)):
        raise ValueError("a kept-channel list is built in the norm only for one row on Triton")
    if not _triton_ok(residual, use_triton):
        if delta is not None:
            residual = residual + delta
        return rms_norm_torch(residual, weight, eps), residual
    rows, width = residual.shape
    out = torch.empty_like(residual)  # [N, hidden]
    new_residual = torch.empty_like(residual) if delta is not None else residual
    block = triton.next_power_of_2(width)
    thr, scale, kept, count = gate if gate is not None else (weight, None, weight, weight)
    _add_rms_norm_kernel[(rows,)](
        delta if delta is not None else residual, residual, weight, out, new_residual, width, eps,
        thr, scale if scale is not None else weight, kept, count,
        HAS_DELTA=delta is not None, HAS_LIST=gate is not None, HAS_SCALE=scale is not None,
        BLOCK=block, num_warps=min(16, max(1, block // 256)),
    )
    return out, new_residual


def rope_and_cache(qkv: Tensor, cos: Tensor, sin: Tensor, positions: Tensor, slots: Tensor,
                   k_cache: Tensor, v_cache: Tensor, heads: int, kv_heads: int, dim: int,
                   use_triton: bool | None = None) -> Tensor:
    """Rotate q and k of `qkv` [N, (H+2Hkv)D]; write k, v to the caches [slots, T, Hkv, D] at
    (slots[i], positions[i]); return q [N, H, D]. cos/sin [P, D] tables indexed by position."""
    rows = qkv.shape[0]
    if not _triton_ok(qkv, use_triton) or dim & (dim - 1):
        # q and k heads are adjacent in qkv: one rotation over all H + Hkv heads (the same
        # elementwise products as rotating each, half the small ops on the CPU's decode step)
        n_qk = (heads + kv_heads) * dim
        c, s = cos[positions][:, None, :], sin[positions][:, None, :]  # [N, 1, D]
        qk = qkv[:, :n_qk].view(rows, heads + kv_heads, dim)  # [N, H + Hkv, D]
        v = qkv[:, n_qk:].view(rows, kv_heads, dim)  # [N, Hkv, D]
        rotated = qk * c + rotate_half(qk) * s  # [N, H + Hkv, D]
        k_cache[slots, positions] = rotated[:, heads:]
        v_cache[slots, positions] = v
        return rotated[:, :heads]  # [N, H, D]
    q = torch.empty(rows, heads, dim, dtype=qkv.dtype, device=qkv.device)  # [N, H, D]
    _rope_cache_kernel[(rows, heads + kv_heads)](
        qkv, cos, sin, positions, slots, q, k_cache, v_cache, qkv.stride(0), cos.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        HEADS=heads, KV_HEADS=kv_heads, DIM=dim, num_warps=1,
    )
    return q


def silu_mul(gate_up: Tensor, act=F.silu, use_triton: bool | None = None) -> Tensor:
    """[N, 2I] -> act(gate) * up [N, I] (SiLU fused on CUDA; other activations through torch)."""
    gate, up = gate_up.chunk(2, dim=-1)  # [N, I] each
    if not _triton_ok(gate_up, use_triton) or not _is_silu(act):
        return act(gate) * up
    rows, width = gate.shape
    out = torch.empty(rows, width, dtype=gate_up.dtype, device=gate_up.device)  # [N, I]
    block = 1024
    _silu_mul_kernel[(rows, triton.cdiv(width, block))](gate_up, out, width, gate_up.stride(0),
                                                         BLOCK=block, num_warps=4)
    return out


def _is_silu(act) -> bool:
    return act is F.silu or type(act).__name__ in ("SiLU", "SiLUActivation")


# -- Triton kernels --------------------------------------------------------------------------------
if triton is not None:

    @triton.jit
    def _round_like(x, dtype: tl.constexpr):
        """Round float32 `x` to `dtype` and back, as a torch op on `dtype` tensors would.

        For bf16 the rounding (to nearest even) is done on the bits, so that the compiler cannot
        fold the round trip away and contract the following add into an FMA.
        """
        if dtype == tl.bfloat16:
            bits = x.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            return bits.to(tl.float32, bitcast=True)
        else:
            return x.to(dtype).to(tl.float32)

    @triton.jit
    def _cast_like(x, dtype: tl.constexpr):
        """float32 -> dtype, rounding bf16 to nearest even on the bits (see `_round_like`)."""
        if dtype == tl.bfloat16:
            bits = _round_like(x, dtype).to(tl.uint32, bitcast=True) >> 16
            return bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)
        else:
            return x.to(dtype)

    @triton.jit
    def _add_rms_norm_kernel(Delta, Residual, Weight, Out, NewResidual, width, eps,
                             Thr, Scale, List, Count, HAS_DELTA: tl.constexpr,
                             HAS_LIST: tl.constexpr, HAS_SCALE: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < width
        x = tl.load(Residual + row * width + cols, mask=mask, other=0.0)
        if HAS_DELTA:
            d = tl.load(Delta + row * width + cols, mask=mask, other=0.0)
            x = (x.to(tl.float32) + d.to(tl.float32)).to(x.dtype)  # rounded like a bf16 add
            tl.store(NewResidual + row * width + cols, x, mask=mask)
        x32 = x.to(tl.float32)
        inv = 1.0 / tl.sqrt(tl.sum(x32 * x32, 0) / width + eps)
        normed = (x32 * inv).to(x.dtype).to(tl.float32)
        w = tl.load(Weight + cols, mask=mask, other=0.0).to(tl.float32)
        y = (normed * w).to(x.dtype)
        tl.store(Out + row * width + cols, y, mask=mask)
        if HAS_LIST:  # the consumer's kept channels, from the values it will read
            score = tl.abs(y.to(tl.float32))
            if HAS_SCALE:
                score = score * tl.load(Scale + cols, mask=mask, other=0.0)
            keep = (score > tl.load(Thr)) & mask
            flags = keep.to(tl.int32)
            tl.store(List + tl.cumsum(flags, 0) - 1, cols, mask=keep)
            tl.store(Count, tl.sum(flags, 0))

    @triton.jit
    def _rope_cache_kernel(QKV, Cos, Sin, Positions, Slots, QOut, KCache, VCache, stride_row,
                           stride_pos, stride_ks, stride_kt, stride_kh,
                           HEADS: tl.constexpr, KV_HEADS: tl.constexpr, DIM: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        head = tl.program_id(1)
        half: tl.constexpr = DIM // 2
        d = tl.arange(0, DIM)
        pos = tl.load(Positions + row).to(tl.int64)
        c = tl.load(Cos + pos * stride_pos + d).to(tl.float32)
        s = tl.load(Sin + pos * stride_pos + d).to(tl.float32)
        base = QKV + row * stride_row + head * DIM
        x = tl.load(base + d)
        partner = tl.load(base + (d + half) % DIM).to(tl.float32)
        rotated = tl.where(d < half, -partner, partner)
        t1 = _round_like(x.to(tl.float32) * c, x.dtype)
        t2 = _round_like(rotated * s, x.dtype)
        y = _cast_like(t1 + t2, x.dtype)
        if head < HEADS:
            tl.store(QOut + row * (HEADS * DIM) + head * DIM + d, y)
        else:
            kvh = head - HEADS
            slot = tl.load(Slots + row).to(tl.int64)
            offset = slot * stride_ks + pos * stride_kt + kvh * stride_kh + d
            tl.store(KCache + offset, y)
            v = tl.load(QKV + row * stride_row + (HEADS + KV_HEADS + kvh) * DIM + d)
            tl.store(VCache + offset, v)

    @triton.jit
    def _silu_mul_kernel(GateUp, Out, width, stride_row, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < width
        g = tl.load(GateUp + row * stride_row + cols, mask=mask, other=0.0)
        u = tl.load(GateUp + row * stride_row + width + cols, mask=mask, other=0.0)
        g32 = g.to(tl.float32)
        act = (g32 / (1.0 + tl.exp(-g32))).to(g.dtype).to(tl.float32)
        tl.store(Out + row * width + cols, (act * u.to(tl.float32)).to(g.dtype), mask=mask)
