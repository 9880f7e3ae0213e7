"""`SparsityState`: every runtime-mutable number of the gated model, as device buffers updated in place.

This is the gated model ↔ engine contract of docs/DESIGN.md. `GatedLinear` modules (the HF path) read
the `active_*` rows; the engine's own model code reads `thresholds[bucket]` etc. directly, with the
bucket index static per captured graph. `GatedModel.set_budget` writes all of them with `copy_`.
All buffers are non-persistent (they never enter the model's state dict).
"""

from __future__ import annotations

import torch
from torch import nn

from dynasparse_worker.sparsity import DEFAULT_BUCKET_EDGES, NUM_GROUPS, NUM_HALVES, bucket_index


class SparsityState(nn.Module):
    """Buffers for the active plan (the engine's `sparsity.PlanState`). Shapes: NB buckets,
    L layers, 4 groups, 2 halves (`sparsity.GROUP_NAMES`, `sparsity.ATTENTION` / `MLP`)."""

    def __init__(self, in_features: list[list[int]], bucket_edges=DEFAULT_BUCKET_EDGES):
        super().__init__()
        self.bucket_edges = tuple(int(e) for e in bucket_edges)
        self.num_layers = len(in_features)
        nb, nl = len(self.bucket_edges), self.num_layers
        self._buf("thresholds", torch.zeros(nb, nl, NUM_GROUPS))  # [NB, L, 4] keep iff score > threshold
        self._buf("layer_keep", torch.ones(nb, nl, NUM_HALVES))  # [NB, L, 2] 1 = run attention / MLP half
        self._buf("kv_cap", torch.zeros(nb, dtype=torch.int64))  # [NB] 0 = unlimited
        self._buf("budget", torch.ones(()))  # [] active budget
        self._buf("expected_loss", torch.zeros(()))  # [] expected KL(dense‖sparse) per token
        self._buf("active_thresholds", torch.zeros(nl, NUM_GROUPS))  # [L, 4] the HF path's row
        self._buf("active_layer_keep", torch.ones(nl, NUM_HALVES))  # [L, 2]
        self._buf("skipped_channels", torch.zeros(nl, NUM_GROUPS, dtype=torch.float64))  # [L, 4] eval counters
        self._buf("tokens_seen", torch.zeros((), dtype=torch.float64))  # [] eval counter
        for layer, widths in enumerate(in_features):
            for group, width in enumerate(widths):
                self._buf(f"col_scale_{layer}_{group}", torch.ones(width))  # [in]
        self.active_bucket = 0  # Python int: which bucket the HF path mirrors (set by select_bucket)

    def _buf(self, name: str, tensor: torch.Tensor) -> None:
        self.register_buffer(name, tensor, persistent=False)

    def col_scale(self, layer: int, group: int) -> torch.Tensor:
        """Per-channel score multiplier of (layer, group): score = |x| · col_scale.  # [in]"""
        return getattr(self, f"col_scale_{layer}_{group}")

    def bucket_index(self, batch_size: int) -> int:
        """The plan bucket serving `batch_size` sequences (`sparsity.bucket_index`)."""
        return bucket_index(self.bucket_edges, batch_size)

    @torch.no_grad()
    def select_bucket(self, index: int) -> None:
        """Mirror bucket `index` of the plan into the `active_*` buffers (in place)."""
        self.active_bucket = int(index)
        self.active_thresholds.copy_(self.thresholds[index])
        self.active_layer_keep.copy_(self.layer_keep[index])

    @torch.no_grad()
    def reset_counters(self) -> None:
        self.skipped_channels.zero_()
        self.tokens_seen.zero_()
