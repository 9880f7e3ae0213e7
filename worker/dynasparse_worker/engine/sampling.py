"""Token sampling on the device: greedy, temperature, top-k, top-p, with a per-request seed.

Randomness is a counter-based hash of (request seed, step, token id), so a request's samples
depend only on its own seed and position — not on which other requests share its batch — and no
generator state is kept per request. Called by `ModelRunner.run` once per step for the whole batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

_MASK32 = 0xFFFFFFFF


def _hash32(x: Tensor) -> Tensor:
    """A 32-bit integer mix (lowbias32) of int64 tensors holding values < 2**32."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def uniform_noise(seeds: Tensor, steps: Tensor, token_ids: Tensor) -> Tensor:
    """seeds/steps [B] int64, token_ids [B, V] int64 -> uniform (0, 1) float32 [B, V]."""
    row = _hash32((seeds & _MASK32) ^ _hash32((steps * 0x9E3779B9) & _MASK32))  # [B]
    bits = _hash32(row[:, None] ^ (token_ids & _MASK32))  # [B, V]
    return ((bits >> 8).float() + 0.5) * (1.0 / (1 << 24))  # [B, V]


def sample(logits: Tensor, temperature: Tensor, top_p: Tensor, top_k: Tensor, seeds: Tensor,
           steps: Tensor) -> Tensor:
    """logits [B, V] float32; per-row params [B] (temperature 0 = greedy) -> tokens [B] int64."""
    greedy = logits.argmax(dim=-1)  # [B]
    temp = temperature.clamp(min=1e-5)[:, None]  # [B, 1]
    probs = torch.softmax(logits / temp, dim=-1)  # [B, V]
    sorted_p, order = probs.sort(dim=-1, descending=True)  # [B, V] each
    rank = torch.arange(logits.shape[-1], device=logits.device)[None, :]  # [1, V]
    cut_k = (top_k[:, None] > 0) & (rank >= top_k[:, None])  # [B, V]
    cut_p = (sorted_p.cumsum(dim=-1) - sorted_p) > top_p[:, None]  # [B, V] (keeps the first)
    kept = sorted_p.masked_fill(cut_k | cut_p, 0.0)  # [B, V]
    exponential = -torch.log(uniform_noise(seeds, steps, order))  # [B, V]
    choice = (kept / exponential).argmax(dim=-1, keepdim=True)  # [B, 1] (exponential race)
    sampled = order.gather(-1, choice).squeeze(-1)  # [B]
    return torch.where(temperature > 0, sampled, greedy)
