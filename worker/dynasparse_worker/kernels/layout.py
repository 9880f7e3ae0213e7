"""Input-major weight packing for the input-sparse projections.

The engine's model runner calls `pack_projection` once per projection group at load time (q/k/v
fused, o, gate/up fused, down) and then hands the returned `PackedWeight` to
`dynasparse_worker.kernels.linear` on every decode step.

Layout: `w_t [in, out]`, row-major, so that one input channel is one contiguous row of the weight
and a skipped channel's row is never read. Fused groups concatenate their outputs along `out`
(q | k | v, or gate | up). With `gated=True` the group is gate | up (equal widths) and the kernels
return `silu(gate) * up` of width `out / 2` instead of both halves.

The Triton path reduces split-K partial sums through a `SplitKWorkspace` that all projections on
a device share; the engine allocates it once (before capturing CUDA graphs) and passes it to
`pack_projection`, so nothing is allocated on the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SplitKWorkspace:
    """Scratch for the Triton split-K reduction, shared by every projection on one device.

    Calls run one after another on a stream, so one buffer serves all layers: `partials` holds
    `[split, batch, out]` float32 sums, `counters` the per-column-block arrival counts, which
    the kernel resets to zero after use. Allocate it before capturing CUDA graphs.
    """

    partials: torch.Tensor
    """Flat float32 scratch, at least `split * batch * out` elements for any call it serves."""
    counters: torch.Tensor
    """`[max_column_blocks]` int32, zero between calls."""
    rows: torch.Tensor | None = None
    """`[max_in]` int32 kept-row indices per input slice, for the compacting variant."""
    row_counts: torch.Tensor | None = None
    """`[max_slices]` int32 kept-row count per input slice, for the compacting variant."""
    accum: torch.Tensor | None = None
    """Flat float32 `[batch * out]` sums of the listed kernel's splits, zero between calls."""

    @classmethod
    def allocate(cls, device: torch.device | str, max_batch: int, max_out: int,
                 max_split: int = 32, max_in: int = 65536) -> SplitKWorkspace:
        """Scratch for calls up to these sizes; `max_in` (the widest input served) sizes the
        kept-row lists of the compacting kernel, the default; 0 limits calls to the predicated one."""
        partials = torch.empty(max_split * max_batch * max_out, dtype=torch.float32, device=device)
        counters = torch.zeros(max_out // 16 + 1, dtype=torch.int32, device=device)  # [NB]
        rows = torch.empty(max_in, dtype=torch.int32, device=device) if max_in else None  # [K]
        row_counts = torch.empty(max_in // 16 + 1, dtype=torch.int32, device=device)  # [S]
        accum = torch.zeros(max_batch * max_out, dtype=torch.float32, device=device)  # [B * N]
        return cls(partials=partials, counters=counters, rows=rows, row_counts=row_counts,
                   accum=accum)


@dataclass
class PackedWeight:
    """One projection group's weight, input-major, plus the shared split-K scratch its kernels use."""

    w_t: torch.Tensor
    """`[in, out]` contiguous; fused outputs concatenated along `out`."""
    splits: tuple[int, ...]
    """Widths of the fused outputs in `out` order, e.g. (q, k, v) or (gate, up)."""
    gated: bool = False
    """gate | up group: the result is `silu(gate) * up`, width `out // 2`."""
    workspace: SplitKWorkspace | None = field(default=None, repr=False)
    """Triton split-K scratch; without one the Triton path runs without split-K."""

    @property
    def in_features(self) -> int:
        return self.w_t.shape[0]

    @property
    def out_features(self) -> int:
        """Width of the result: `out`, or `out // 2` for a gated group."""
        return self.w_t.shape[1] // 2 if self.gated else self.w_t.shape[1]


def pack_projection(weights: list[torch.Tensor], gated: bool = False,
                    workspace: SplitKWorkspace | None = None,
                    dtype: torch.dtype | None = None) -> PackedWeight:
    """Fuse `nn.Linear`-layout weights (`[out_i, in]` each, same `in`) into one input-major matrix.

    `gated=True` expects exactly `[gate, up]` of equal shape. `dtype` converts the packed copy
    (bf16 on the CPU halves the bytes each step reads; see `torch_ops`).
    """
    if not weights:
        raise ValueError("pack_projection needs at least one weight")
    in_features = weights[0].shape[1]
    if any(w.dim() != 2 or w.shape[1] != in_features for w in weights):
        raise ValueError("all fused weights must be 2-D with the same input width")
    if gated and (len(weights) != 2 or weights[0].shape != weights[1].shape):
        raise ValueError("a gated group is exactly [gate, up] of equal shape")
    w_t = torch.cat([w.detach().t() for w in weights], dim=1)  # [in, sum(out_i)]
    w_t = w_t.to(dtype).contiguous() if dtype is not None else w_t.contiguous()
    return PackedWeight(w_t=w_t, splits=tuple(w.shape[0] for w in weights), gated=gated,
                        workspace=workspace)


def split_outputs(pw: PackedWeight, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Views of a fused (non-gated) result per projection: `[B, sum(out_i)]` -> `[B, out_i]` each."""
    if pw.gated:
        return (y,)
    return tuple(torch.split(y, pw.splits, dim=-1))
