"""The preallocated KV cache: one static region of `max_seq_len` tokens per slot, for every layer.

Sized once at start-up — on CUDA from a fraction of the free device memory, on the CPU from a
configured token capacity — and never reallocated, so CUDA graphs can capture its addresses. One
extra *scratch* slot absorbs the writes of padded rows in a captured decode batch. Built by
`ModelRunner`; the scheduler sees only `num_slots` and `max_seq_len`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dynasparse_worker.engine.model import ModelShape
from dynasparse_worker.errors import UserError


@dataclass
class KVCache:
    k: Tensor  # [L, slots + 1, T, Hkv, D]
    v: Tensor  # [L, slots + 1, T, Hkv, D]
    num_slots: int  # usable slots (the scratch slot is index num_slots)
    max_seq_len: int  # T

    @property
    def scratch_slot(self) -> int:
        return self.num_slots

    @property
    def capacity_tokens(self) -> int:
        return self.num_slots * self.max_seq_len

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()


def bytes_per_token(shape: ModelShape, dtype: torch.dtype) -> int:
    """K and V bytes one token occupies across all layers."""
    element = torch.empty((), dtype=dtype).element_size()
    return 2 * shape.num_layers * shape.num_kv_heads * shape.head_dim * element


def plan_slots(shape: ModelShape, dtype: torch.dtype, device: torch.device, max_batch: int,
               max_seq_len: int, memory_fraction: float, cpu_capacity_tokens: int) -> int:
    """How many slots fit: a fraction of free CUDA memory, or the CPU token capacity."""
    per_slot = bytes_per_token(shape, dtype) * max_seq_len
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        fit = int(free * memory_fraction) // per_slot - 1  # one slot is the scratch slot
    else:
        fit = cpu_capacity_tokens // max_seq_len
    if fit < 1:
        raise UserError(
            f"the KV cache cannot hold one sequence of {max_seq_len} tokens: lower max_seq_len, "
            "or raise the KV memory fraction / token capacity"
        )
    return min(max_batch, fit)


def allocate(shape: ModelShape, num_slots: int, max_seq_len: int, dtype: torch.dtype,
             device: torch.device) -> KVCache:
    dims = (shape.num_layers, num_slots + 1, max_seq_len, shape.num_kv_heads, shape.head_dim)
    k = torch.zeros(dims, dtype=dtype, device=device)  # [L, S+1, T, Hkv, D]
    v = torch.zeros(dims, dtype=dtype, device=device)  # [L, S+1, T, Hkv, D]
    return KVCache(k, v, num_slots, max_seq_len)
