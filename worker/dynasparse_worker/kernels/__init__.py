"""Input-sparse decode matmuls: the engine's one dispatch point for projection groups.

The engine's model runner packs each layer's projection groups once (`pack_projection`: q|k|v,
o, gate|up with `gated=True`, down; input-major `[in, out]`), allocates one `SplitKWorkspace` per
device before capturing graphs, and on every step calls

    y = linear(x, packed, thresholds[bucket, layer, group], col_scale[layer][group],
               mode=choose(batch, expected_sparsity, device.type))

`threshold` is a one-element view into `SparsityState.thresholds`, so `set_budget` changes it in
place with no re-compile and no graph re-capture. `mode="dense"` masks x the same way and runs
one dense `x @ W_t` (same result, dense cost). At budget 1.0 (every threshold 0) the engine can
call `dense_matmul(x, packed)` directly: threshold 0 keeps every nonzero channel, so the mask
changes nothing and its launches are pure overhead. CUDA runs the Triton kernels (loaded lazily:
`triton_compact` by default, whose loop runs over the kept rows only; `triton_sparse` holds the
launcher and the predicated kernel); the CPU runs `embedding_bag` over the kept rows (`torch_ops`).
"""

from __future__ import annotations

from typing import Literal

import torch

from dynasparse_worker.kernels.configs import KernelConfig, choose, crossover
from dynasparse_worker.kernels.layout import (
    PackedWeight,
    SplitKWorkspace,
    pack_projection,
    split_outputs,
)
from dynasparse_worker.kernels.torch_ops import dense_matmul, masked_reference, sparse_matmul_torch
from dynasparse_worker.sparsity import keep_mask

__all__ = [
    "KernelConfig", "PackedWeight", "SplitKWorkspace", "choose", "crossover", "dense_matmul",
    "keep_mask", "linear", "masked_reference", "pack_projection", "sparse_matmul",
    "sparse_matmul_torch", "split_outputs",
]


def sparse_matmul(x: torch.Tensor, pw: PackedWeight, threshold: torch.Tensor,
                  col_scale: torch.Tensor | None = None,
                  out: torch.Tensor | None = None, prelisted: bool = False,
                  config: KernelConfig | None = None) -> torch.Tensor:
    """Input-sparse `[B, in] -> [B, N]` on x's device: Triton on CUDA, embedding_bag on the CPU.
    CUDA: `config` picks the kernel (default: the compacting one); `prelisted`: x's producer
    already wrote its kept-channel list into the workspace (listed kernel)."""
    if x.device.type == "cuda":
        from dynasparse_worker.kernels.triton_sparse import sparse_matmul_triton

        return sparse_matmul_triton(x, pw, threshold, col_scale, out=out, config=config,
                                    prelisted=prelisted)
    y = sparse_matmul_torch(x, pw, threshold, col_scale)
    return y if out is None else out.copy_(y)


def linear(x: torch.Tensor, pw: PackedWeight, threshold: torch.Tensor,
           col_scale: torch.Tensor | None = None,
           mode: Literal["sparse", "dense"] = "sparse",
           out: torch.Tensor | None = None) -> torch.Tensor:
    """One projection group under the gating contract; `mode` comes from `choose`."""
    if mode == "dense":
        if x.device.type == "cuda":  # one fused mask launch, then cuBLAS
            from dynasparse_worker.kernels.triton_mask import mask_input_triton

            y = dense_matmul(mask_input_triton(x, threshold, col_scale), pw)
        else:
            y = dense_matmul(x, pw, threshold, col_scale)
        return y if out is None else out.copy_(y)
    return sparse_matmul(x, pw, threshold, col_scale, out=out)
