"""Attention over the engine's static per-slot KV cache: decode (split-K flash-decoding) and prefill.

Cache layout, one tensor per K and V for all layers: `[L, slots, T, Hkv, D]`. Decode reads, for each
sequence, only the entries `[start, len)` given by device tensors — never the whole preallocated `T`
(at large batch that would read far more KV bytes than weight bytes). On CUDA this is a Triton kernel
split over the sequence axis (partial softmax per split, then a combine kernel); on the CPU the same
function falls back to torch over the batch's longest real length. Lengths and starts live in device
tensors, so one captured CUDA graph serves every length. Called by `ModelRunner`.

Gemma's extras: a sliding window (local layers) is a `starts` row like the KV cap's, computed by the
runner; tanh soft-capping of the scores (Gemma 2) runs `softcap_attention`, plain torch that
rounds like HF's eager attention and, on CUDA, reads the slot's whole `T` so it needs no host sync
inside a captured graph (as does the torch fallback for head dims the Triton kernel does not take).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

try:  # triton is optional on CPU-only installs
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only without triton
    triton = None


def softcap_attention(query: Tensor, keys: Tensor, values: Tensor, visible: Tensor, scale: float,
                      softcap: float) -> Tensor:
    """Attention with tanh-capped scores, rounded where HF's eager Gemma 2 attention rounds.

    query [B, H, n, D]; keys/values [B, Hkv, T, D]; visible [B or 1, 1, n, T] bool -> [B, H, n, D].
    Scores and the cap in the input dtype, softmax in float32, probabilities back to the dtype.
    """
    group = query.shape[1] // keys.shape[1]
    keys = keys.repeat_interleave(group, dim=1)  # [B, H, T, D]
    values = values.repeat_interleave(group, dim=1)  # [B, H, T, D]
    scores = torch.matmul(query, keys.transpose(-1, -2)) * scale  # [B, H, n, T]
    scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~visible, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)  # [B, H, n, T]
    return torch.matmul(probs, values)  # [B, H, n, D]


def prefill_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, slot: int, start: int,
                      scale: float, window: int | None = None,
                      softcap: float | None = None) -> Tensor:
    """Causal attention of a prompt chunk over its slot's cached prefix (chunk already written).

    q [n, H, D]; k_cache/v_cache [slots, T, Hkv, D] (one layer) -> [n, H, D]. `window` W: each
    query sees only the last W positions (itself included), as HF's sliding-window mask;
    `softcap`: Gemma 2's tanh cap on the scores.
    """
    n = q.shape[0]
    end = start + n
    keys = k_cache[slot, :end].transpose(0, 1)[None]  # [1, Hkv, end, D]
    values = v_cache[slot, :end].transpose(0, 1)[None]  # [1, Hkv, end, D]
    query = q.transpose(0, 1)[None]  # [1, H, n, D]
    if window is not None or softcap is not None:
        rows = torch.arange(start, end, device=q.device)[:, None]  # [n, 1]
        cols = torch.arange(end, device=q.device)[None, :]  # [1, end]
        visible = cols <= rows  # [n, end]
        if window is not None:
            visible &= cols > rows - window
        if softcap is not None:
            out = softcap_attention(query, keys, values, visible[None, None], scale, softcap)
        else:
            out = F.scaled_dot_product_attention(query, keys, values, attn_mask=visible, scale=scale,
                                                 enable_gqa=True)
        return out[0].transpose(0, 1)  # [n, H, D]
    if start == 0:
        out = F.scaled_dot_product_attention(query, keys, values, is_causal=True, scale=scale,
                                             enable_gqa=True)
    else:
        rows = torch.arange(start, end, device=q.device)[:, None]  # [n, 1]
        cols = torch.arange(end, device=q.device)[None, :]  # [1, end]
        out = F.scaled_dot_product_attention(query, keys, values, attn_mask=cols <= rows,
                                             scale=scale, enable_gqa=True)
    return out[0].transpose(0, 1)  # [n, H, D]


def decode_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, slots: Tensor, lens: Tensor,
                     starts: Tensor | None, scale: float, num_splits: int = 0,
                     sinks: int = 0, longest: int | None = None,
                     softcap: float | None = None) -> Tensor:
    """One query token per sequence. q [B, H, D]; caches [slots, T, Hkv, D]; slots/lens/starts [B].

    Sequence b attends to its cache entries [starts[b], lens[b]) (starts None = from 0), plus the
    attention sinks [0, min(sinks, starts[b])) when a KV cap moved its window.
    `num_splits` (CUDA only) is fixed per captured graph; 0 picks one from the shapes.
    `softcap` (Gemma 2) takes the torch path.
    """
    dim = q.shape[-1]
    if (q.is_cuda and triton is not None and dim >= 16 and dim & (dim - 1) == 0
            and softcap is None):
        return _decode_triton(q, k_cache, v_cache, slots, lens, starts, scale, num_splits, sinks)
    if longest is None and q.is_cuda:
        longest = k_cache.shape[1]  # all of T: no host read of lens, so a graph can capture it
    return decode_attention_torch(q, k_cache, v_cache, slots, lens, starts, scale, sinks, longest,
                                  softcap)


def decode_attention_torch(q: Tensor, k_cache: Tensor, v_cache: Tensor, slots: Tensor, lens: Tensor,
                           starts: Tensor | None, scale: float, sinks: int = 0,
                           longest: int | None = None, softcap: float | None = None) -> Tensor:
    """Reference / CPU path: gather each sequence's first max(lens) entries and mask the rest.

    One fused SDPA call (GQA inside) in float32; `longest` = int(lens.max()) when the caller
    already knows it (the CPU runner computes it once per step, not once per layer).
    With `softcap`, `softcap_attention` in the cache dtype instead (HF's eager rounding).
    """
    batch, heads, dim = q.shape
    longest = int(lens.max()) if longest is None else longest
    keys = k_cache[slots, :longest].transpose(1, 2)  # [B, Hkv, Tm, D]
    values = v_cache[slots, :longest].transpose(1, 2)  # [B, Hkv, Tm, D]
    pos = torch.arange(longest, device=q.device)[None, :]  # [1, Tm]
    valid = pos < lens[:, None]  # [B, Tm]
    if starts is not None:
        valid &= (pos >= starts[:, None]) | (pos < sinks)
    if batch > 1:  # entries past a shorter sequence's length may hold anything (even NaN)
        inside = (pos < lens[:, None])[:, None, :, None]  # [B, 1, Tm, 1]
        keys, values = keys.where(inside, 0.0), values.where(inside, 0.0)
    if softcap is not None:
        out = softcap_attention(q[:, :, None, :], keys, values, valid[:, None, None, :], scale,
                                softcap)  # [B, H, 1, D]
        return out.reshape(batch, heads, dim)
    keys, values = keys.float(), values.float()  # [B, Hkv, Tm, D]
    out = F.scaled_dot_product_attention(q.float()[:, :, None, :], keys, values,
                                         attn_mask=valid[:, None, None, :], scale=scale,
                                         enable_gqa=True)  # [B, H, 1, D]
    return out.reshape(batch, heads, dim).to(q.dtype)


def decode_attention_one(q: Tensor, k_cache: Tensor, v_cache: Tensor, slot: int, length: int,
                         scale: float) -> Tensor:
    """One sequence's decode over its entries [0, length) of `slot`, no window, no KV cap.

    The CPU runner's batch-1 step: the host already knows slot and length, so the keys are views
    of the cache (no gather) and no mask is built — 14 small ops fewer per layer than
    `decode_attention_torch`, the same SDPA call on the same entries. q [1, H, D] -> [1, H, D].
    """
    keys = k_cache[slot, :length].transpose(0, 1)[None]  # [1, Hkv, T, D] view
    values = v_cache[slot, :length].transpose(0, 1)[None]  # [1, Hkv, T, D] view
    out = F.scaled_dot_product_attention(q.float()[:, :, None, :], keys.float(), values.float(),
                                         scale=scale, enable_gqa=True)  # [1, H, 1, D]
    return out.reshape(q.shape).to(q.dtype)


def pick_num_splits(batch: int, kv_heads: int, max_len: int, sm_count: int = 132) -> int:
    """Enough programs to fill the GPU (~4 per SM), but no split shorter than 512 cache entries:
    below that one program per (sequence, kv head) reads its entries faster than a second launch."""
    want = max(1, (4 * sm_count) // max(1, batch * kv_heads))
    return int(max(1, min(want, -(-max_len // 512), 64)))


def _decode_triton(q, k_cache, v_cache, slots, lens, starts, scale, num_splits, sinks=0):
    batch, heads, dim = q.shape
    kv_heads = k_cache.shape[2]
    group = heads // kv_heads
    if num_splits <= 0:
        num_splits = pick_num_splits(batch, kv_heads, k_cache.shape[1])
    out = torch.empty_like(q)  # [B, H, D]
    partial_lse = torch.empty(batch, heads, num_splits, device=q.device, dtype=torch.float32)
    if num_splits == 1:  # one split: the partial kernel writes the final output, no combine launch
        partial_out, strides = out, (out.stride(0), out.stride(1), 0)
    else:
        partial_out = torch.empty(batch, heads, num_splits, dim, device=q.device, dtype=torch.float32)
        strides = (partial_out.stride(0), partial_out.stride(1), partial_out.stride(2))
    has_start = starts is not None
    _decode_partial[(batch, kv_heads, num_splits)](
        q, k_cache, v_cache, slots, lens, starts if has_start else lens, partial_out, partial_lse,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        *strides, scale,
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), DIM=dim,
        BLOCK_N=64, SPLITS=num_splits, HAS_START=has_start, SINKS=sinks if has_start else 0,
        num_warps=4, num_stages=3,
    )
    if num_splits > 1:
        _decode_combine[(batch, heads)](
            partial_out, partial_lse, out, partial_out.stride(0), partial_out.stride(1),
            partial_out.stride(2), out.stride(0), out.stride(1),
            DIM=dim, SPLITS=num_splits, SPLITS_PAD=triton.next_power_of_2(num_splits), num_warps=4,
        )
    return out


if triton is not None:

    @triton.jit
    def _decode_partial(Q, K, V, Slots, Lens, Starts, PartOut, PartLse,
                        stride_qb, stride_qh, stride_ks, stride_kt, stride_kh,
                        stride_pb, stride_ph, stride_ps, scale,
                        GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, DIM: tl.constexpr,
                        BLOCK_N: tl.constexpr, SPLITS: tl.constexpr, HAS_START: tl.constexpr,
                        SINKS: tl.constexpr = 0):
        b = tl.program_id(0)
        kvh = tl.program_id(1)
        split = tl.program_id(2)
        length = tl.load(Lens + b).to(tl.int32)
        first = 0
        if HAS_START:
            first = tl.load(Starts + b).to(tl.int32)
        slot = tl.load(Slots + b).to(tl.int64)
        # virtual index i over [0, sunk + length - first): the sinks [0, sunk), then the window
        sunk = tl.minimum(first, SINKS)
        span = sunk + length - first
        chunk = tl.cdiv(tl.cdiv(span, SPLITS), BLOCK_N) * BLOCK_N
        lo = split * chunk
        hi = tl.minimum(lo + chunk, span)

        g = tl.arange(0, GROUP_PAD)  # query heads of this kv head
        d = tl.arange(0, DIM)
        heads = kvh * GROUP + g
        q = tl.load(Q + b * stride_qb + heads[:, None] * stride_qh + d[None, :],
                    mask=(g < GROUP)[:, None], other=0.0)  # [G, D]
        m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
        l_i = tl.zeros([GROUP_PAD], tl.float32)
        acc = tl.zeros([GROUP_PAD, DIM], tl.float32)
        base = slot * stride_ks + kvh * stride_kh
        for n0 in range(lo, hi, BLOCK_N):
            i = n0 + tl.arange(0, BLOCK_N)
            valid = i < hi
            n = tl.where(i < sunk, i, i - sunk + first)  # cache position of virtual index i
            offs = base + n[:, None].to(tl.int64) * stride_kt + d[None, :]
            k = tl.load(K + offs, mask=valid[:, None], other=0.0)  # [N, D]
            v = tl.load(V + offs, mask=valid[:, None], other=0.0)  # [N, D]
            s = tl.dot(q, tl.trans(k)).to(tl.float32) * scale  # [G, N]
            s = tl.where(valid[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.exp(s - m_new[:, None])
            alpha = tl.exp(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v).to(tl.float32)
            m_i = m_new
        empty = l_i == 0.0
        out = acc / tl.where(empty, 1.0, l_i)[:, None]
        lse = tl.where(empty, float("-inf"), m_i + tl.log(tl.where(empty, 1.0, l_i)))
        row = PartOut + b * stride_pb + heads[:, None] * stride_ph + split * stride_ps + d[None, :]
        tl.store(row, out, mask=(g < GROUP)[:, None])
        num_heads = tl.num_programs(1) * GROUP
        tl.store(PartLse + (b * num_heads + heads) * SPLITS + split, lse, mask=g < GROUP)

    @triton.jit
    def _decode_combine(PartOut, PartLse, Out, stride_pb, stride_ph, stride_ps, stride_ob, stride_oh,
                        DIM: tl.constexpr, SPLITS: tl.constexpr, SPLITS_PAD: tl.constexpr):
        b = tl.program_id(0)
        h = tl.program_id(1)
        s = tl.arange(0, SPLITS_PAD)
        d = tl.arange(0, DIM)
        lse = tl.load(PartLse + (b * tl.num_programs(1) + h) * SPLITS + s, mask=s < SPLITS,
                      other=float("-inf"))  # [S]
        top = tl.max(lse, 0)
        weight = tl.where(lse == float("-inf"), 0.0, tl.exp(lse - top))  # [S]
        parts = tl.load(PartOut + b * stride_pb + h * stride_ph + s[:, None] * stride_ps + d[None, :],
                        mask=(s < SPLITS)[:, None], other=0.0)  # [S, D]
        out = tl.sum(parts * weight[:, None], 0) / tl.sum(weight, 0)
        tl.store(Out + b * stride_ob + h * stride_oh + d, out.to(Out.dtype.element_ty))
