"""`GatedLinear`: the module that replaces each block's nn.Linear projections (q/k/v/o/gate/up/down).

It shares the original weight and bias Parameters (state-dict keys unchanged, base weights untouched)
and reads its gate from the shared `SparsityState`: input channel j is kept iff
`|x_j| · col_scale_j > threshold[layer, group]`; the output of a half's last projection (o, down) is
multiplied by `layer_keep[layer, half]`, which skips that half (its contribution to the residual);
the keys and values of a skipped attention half are still computed, ungated, for the KV cache.
Installed by `gating.install`; no forward patching.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dynasparse_worker.gating.state import SparsityState
from dynasparse_worker.sparsity import ATTENTION, ATTN_IN, keep_mask


class GatedLinear(nn.Module):
    is_gated_linear = True

    def __init__(self, linear: nn.Module, state: SparsityState, layer: int, group: int,
                 leader: bool, half: int | None):
        super().__init__()
        self.weight = linear.weight  # [out, in] the original Parameter
        self.bias = linear.bias  # [out] or None
        self.in_features = int(self.weight.shape[1])
        self.out_features = int(self.weight.shape[0])
        self.layer, self.group, self.leader, self.half = layer, group, leader, half
        self.track = False  # eval: the group's leader counts skipped channels (never on in compiled graphs)
        object.__setattr__(self, "_state", state)  # shared, registered once on the model

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, layer={self.layer}, group={self.group}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [..., in]
        state = self._state
        threshold = state.active_thresholds[self.layer, self.group]  # []
        if self.group == ATTN_IN:
            # a skipped attention half still computes its keys and values for the cache, ungated,
            # as the engine does (its queries and output are dropped by the `layer_keep` below)
            threshold = threshold * state.active_layer_keep[self.layer, ATTENTION]  # []
        keep = keep_mask(x, threshold, state.col_scale(self.layer, self.group))  # [..., in] bool
        if self.track:
            state.skipped_channels[self.layer, self.group] += (~keep).sum(dtype=torch.float64)
            if self.layer == 0 and self.group == ATTN_IN:
                state.tokens_seen += keep.numel() // self.in_features
        y = F.linear(x * keep, self.weight, self.bias)  # [..., out]
        if self.half is not None:
            y = y * state.active_layer_keep[self.layer, self.half]  # [..., out]
        return y
