"""The attention and fused kernels compute what their torch references compute.

The Triton kernels run on the CPU under `TRITON_INTERPRET=1`, in a subprocess because the
interpreter is chosen when the kernels are defined (import time).
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch
import torch.nn.functional as F

from dynasparse_worker.engine.attention import decode_attention_torch, prefill_attention

_INTERPRETED_CHECKS = r"""
import torch
from dynasparse_worker.engine import attention, fused
torch.manual_seed(0)
q = torch.randn(3, 8, 32); k = torch.randn(4, 200, 2, 32); v = torch.randn(4, 200, 2, 32)
slots = torch.tensor([2, 0, 3]); lens = torch.tensor([1, 130, 200]); starts = torch.tensor([0, 10, 150])
for st, sinks in ((None, 0), (starts, 0), (starts, 4), (starts, 64)):
    for splits in (1, 3):
        ref = attention.decode_attention_torch(q, k, v, slots, lens, st, 0.2, sinks)
        got = attention._decode_triton(q, k, v, slots, lens, st, 0.2, splits, sinks)
        assert (got - ref).abs().max() < 1e-5, ("attention", splits, sinks)
for dtype in (torch.float32, torch.bfloat16):
    qkv = torch.randn(3, 8 * 16, dtype=dtype)
    cos, sin = torch.randn(20, 16, dtype=dtype), torch.randn(20, 16, dtype=dtype)
    pos, sl = torch.tensor([3, 0, 7]), torch.tensor([1, 2, 0])
    outs = []
    for use in (False, True):
        kc = torch.zeros(3, 10, 2, 16, dtype=dtype); vc = torch.zeros_like(kc)
        outs.append((fused.rope_and_cache(qkv, cos, sin, pos, sl, kc, vc, 4, 2, 16, use_triton=use), kc, vc))
    assert all(torch.equal(a, b) for a, b in zip(*outs)), ("rope", dtype)
x, d, w = torch.randn(3, 96), torch.randn(3, 96), torch.randn(96)
for delta in (None, d):
    a, b = fused.add_rms_norm(delta, x, w, 1e-5, use_triton=False), fused.add_rms_norm(delta, x, w, 1e-5, use_triton=True)
    assert torch.equal(a[1], b[1]) and (a[0] - b[0]).abs().max() < 1e-5, "norm"
gu = torch.randn(3, 3000)
assert (fused.silu_mul(gu, use_triton=False) - fused.silu_mul(gu, use_triton=True)).abs().max() < 1e-5, "silu"
print("ok")
"""


def test_triton_kernels_match_torch_references_under_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", _INTERPRETED_CHECKS], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_decode_attention_reads_only_each_sequences_window():
    torch.manual_seed(0)
    q = torch.randn(3, 6, 16)  # [B, H, D]
    k, v = torch.randn(4, 50, 2, 16), torch.randn(4, 50, 2, 16)  # [S, T, Hkv, D]
    slots, lens, starts = torch.tensor([3, 1, 0]), torch.tensor([5, 50, 17]), torch.tensor([0, 20, 16])
    got = decode_attention_torch(q, k, v, slots, lens, starts, 0.25)
    for b in range(3):
        keys = k[slots[b], starts[b]:lens[b]].repeat_interleave(3, dim=1).transpose(0, 1)  # [H, t, D]
        values = v[slots[b], starts[b]:lens[b]].repeat_interleave(3, dim=1).transpose(0, 1)
        ref = F.scaled_dot_product_attention(q[b][:, None], keys, values, scale=0.25)[:, 0]  # [H, D]
        assert torch.allclose(got[b], ref, atol=1e-5)
    k[3, 5:] = float("nan")  # entries past a sequence's length are never read
    assert not decode_attention_torch(q, k, v, slots, lens, None, 0.25)[0].isnan().any()


def test_prefill_chunk_attends_causally_to_the_cached_prefix():
    torch.manual_seed(0)
    k, v = torch.randn(2, 32, 2, 8), torch.randn(2, 32, 2, 8)  # [S, T, Hkv, D]
    q = torch.randn(10, 4, 8)  # [n, H, D]
    whole = prefill_attention(q, k, v, slot=1, start=0, scale=0.3)  # [10, H, D]
    tail = prefill_attention(q[6:], k, v, slot=1, start=6, scale=0.3)  # [4, H, D]
    assert torch.allclose(whole[6:], tail, atol=1e-6)


def test_softcapped_and_windowed_attention_match_a_per_sequence_reference():
    torch.manual_seed(2)
    q = torch.randn(3, 4, 16)  # [B, H, D]
    k, v = torch.randn(4, 40, 2, 16), torch.randn(4, 40, 2, 16)  # [S, T, Hkv, D]
    slots, lens = torch.tensor([1, 3, 0]), torch.tensor([5, 40, 23])
    starts = (lens - 8).clamp(min=0)  # an 8-entry sliding window
    for cap in (None, 1.5):
        # longest=T is what a captured CUDA graph reads (no host sync); max(lens) what the CPU reads
        whole = decode_attention_torch(q, k, v, slots, lens, starts, 0.3, longest=40, softcap=cap)
        assert torch.allclose(whole, decode_attention_torch(q, k, v, slots, lens, starts, 0.3,
                                                            softcap=cap), atol=1e-6)
        for b in range(3):
            keep = list(range(int(starts[b]), int(lens[b])))
            keys = k[slots[b], keep].repeat_interleave(2, dim=1)  # [n, H, D]
            scores = torch.einsum("hd,nhd->hn", q[b], keys) * 0.3  # [H, n]
            if cap is not None:
                scores = torch.tanh(scores / cap) * cap
            want = torch.einsum("hn,nhd->hd", scores.softmax(-1),
                                v[slots[b], keep].repeat_interleave(2, dim=1))
            assert torch.allclose(whole[b], want, atol=1e-5), (cap, b)
    # prefill: a window-W chunk with a cap equals the decode path row by row
    chunk = prefill_attention(q, k, v, slot=3, start=37, scale=0.3, window=8, softcap=1.5)
    rows = decode_attention_torch(q, k, v, torch.tensor([3] * 3), torch.tensor([38, 39, 40]),
                                  torch.tensor([30, 31, 32]), 0.3, softcap=1.5)
    assert torch.allclose(chunk, rows, atol=1e-5)
