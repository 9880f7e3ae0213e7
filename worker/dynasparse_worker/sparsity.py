"""The sparsity vocabulary: the words the gated model, the engine and the kernels share.

* **Groups**: the four projection inputs of a decoder block whose channels a width gate can skip
  (`GROUP_NAMES`; q|k|v read `attn_in`, o reads `attn_out`, gate|up read `mlp_in`, down reads
  `mlp_out`). A group id is the index into `GROUP_NAMES` and the last axis of the thresholds.
* **Halves**: a layer's attention and MLP, each skippable whole by a depth plan (`ATTENTION`,
  `MLP`; the last axis of `layer_keep`). A skipped attention half still computes its keys and
  values, so a denser plan later finds the layer's cache complete.
* **Plan buckets**: a plan holds one row per batch-size bucket (`DEFAULT_BUCKET_EDGES`); a batch
  of n sequences follows the plan of `bucket_index(edges, n)`.
* **The gate rule**: channel j of a token is kept iff `|x_j| · col_scale_j > threshold`
  (`keep_mask`); the Triton kernels implement the same rule on the device.
* **Byte accounting**: the weight bytes a skipped half saves (`HalfBytes`), the fraction a depth
  plan still reads (`kept_fraction`) and the width sparsity that meets a budget on top of it
  (`width_sparsity`).
* **`PlanState`**: what the engine reads from the gated model's `SparsityState`.

A leaf module (torch only), so `models`, `gating`, `engine` and `kernels` all import it.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Protocol

import torch

GROUP_NAMES = ("attn_in", "attn_out", "mlp_in", "mlp_out")
ATTN_IN, ATTN_OUT, MLP_IN, MLP_OUT = range(len(GROUP_NAMES))
NUM_GROUPS = len(GROUP_NAMES)

ATTENTION, MLP = 0, 1
NUM_HALVES = 2
HALF_OF_GROUP = (ATTENTION, ATTENTION, MLP, MLP)  # group id -> the half it belongs to
# the group whose output closes each half: a skipped half drops that group's contribution
CLOSING_GROUP = {ATTENTION: ATTN_OUT, MLP: MLP_OUT}

# per layer: (run the attention half, run the MLP half), read on the host; None: every half runs
Depth = tuple[tuple[bool, bool], ...]

DEFAULT_BUCKET_EDGES = (1, 2, 4, 8, 16, 32, 64, 128)


def bucket_index(edges: Sequence[int], batch_size: int) -> int:
    """The plan bucket serving `batch_size` sequences: the first edge >= it (the last beyond).
    `edges` ascend."""
    return min(bisect.bisect_left(edges, batch_size), len(edges) - 1)


def gate_score(x: torch.Tensor, col_scale: torch.Tensor | None = None) -> torch.Tensor:
    """`|x| · col_scale` `[..., in]`, in float32 at least (float64 stays float64)."""
    wide = x.dtype in (torch.float32, torch.float64)
    score = x.abs() if wide else x.float().abs_()  # [..., in], a fresh tensor either way
    if col_scale is not None:
        score.mul_(col_scale)
    return score


def keep_mask(x: torch.Tensor, threshold: torch.Tensor,
              col_scale: torch.Tensor | None = None) -> torch.Tensor:
    """`[..., in]` bool: channel j is kept iff `|x_j| · col_scale_j > threshold`."""
    return gate_score(x, col_scale) > threshold


def groups_to_halves(per_group: torch.Tensor) -> torch.Tensor:
    """`[..., 4]` per-group values -> `[..., 2]` their sums per half (attention, MLP)."""
    return torch.stack([per_group[..., ATTN_IN:ATTN_OUT + 1].sum(-1),
                        per_group[..., MLP_IN:MLP_OUT + 1].sum(-1)], -1)


# per layer: (attention, MLP) weight bytes a skipped half does not read (the query and output
# projections; the whole MLP)
HalfBytes = list[tuple[int, int]]


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes of a tensor's elements."""
    return t.numel() * t.element_size()


def half_bytes_of(skip_elements: Sequence[tuple[int, int]], element_size: int) -> HalfBytes:
    """`HalfBytes` from per-layer (attention, MLP) skipped weight elements."""
    return [(attention * element_size, mlp * element_size) for attention, mlp in skip_elements]


def total_bytes(half_bytes: HalfBytes) -> int:
    """Weight bytes of every half together (what the dense plan reads of them)."""
    return sum(a + m for a, m in half_bytes)


def kept_fraction(depth: Sequence[Sequence[float]] | None, half_bytes: HalfBytes) -> float:
    """Fraction of the halves' weight bytes that the depth plan still reads (`depth`: per layer,
    attention and MLP kept as bools or 0/1; None: every half runs)."""
    total = total_bytes(half_bytes)
    if depth is None:
        return 1.0
    kept = sum(a * ka + m * km for (a, m), (ka, km) in zip(half_bytes, depth))
    return kept / total


def width_sparsity(budget: float, depth: Sequence[Sequence[float]] | None,
                   half_bytes: HalfBytes) -> float:
    """The width sparsity that, on top of `depth`, meets `budget` (bytes read / dense bytes)."""
    kept = kept_fraction(depth, half_bytes)
    if kept <= 0.0:
        return 0.0
    return float(min(0.95, max(0.0, 1.0 - budget / kept)))


class PlanState(Protocol):
    """The device tensors of the active plan that the engine reads (`gating.SparsityState`).
    NB plan buckets, L layers; every tensor is written in place, never replaced."""

    bucket_edges: tuple[int, ...]
    thresholds: torch.Tensor  # [NB, L, 4] float32, keep iff score > threshold
    layer_keep: torch.Tensor  # [NB, L, 2] 1 = run the attention / MLP half
    kv_cap: torch.Tensor  # [NB] int64, 0 = unlimited
    budget: torch.Tensor  # [] the active budget
    expected_loss: torch.Tensor  # [] expected KL(dense‖sparse) per token

    def col_scale(self, layer: int, group: int) -> torch.Tensor:
        """Per-channel score multiplier of (layer, group). `[in]`"""
        ...
