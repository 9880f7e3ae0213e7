"""Plain-torch paths of the input-sparse contract: the CPU sparse path, the dense path, the reference.

`dynasparse_worker.kernels.linear` calls `sparse_matmul_torch` on the CPU (the demo and e2e run
there) and `dense_matmul` wherever the crossover table says dense wins; the tests and the GPU
suite compare every kernel against `masked_reference`.

CPU sparse path: each token's kept channels (`|x_j|·col_scale_j > threshold`) become one bag of
`F.embedding_bag(mode="sum", per_sample_weights=x_kept)` over the input-major weight, which
reads only the kept rows and sums them weighted by `x` in one pass, with no gathered copy of
the weight (`index_select` would copy the kept rows first, and is slow on this build).
One call per token: several bags in one call enter an OpenMP region that, on a loaded 2-core
machine, took 10-50x longer than the work (measured here). With bf16 weights (`pack_projection(
..., dtype=torch.bfloat16)`) the dense CPU path also runs as embedding_bag over all rows, since
bf16 `mm` has no fast kernel on AVX2 CPUs while embedding_bag converts rows on the fly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dynasparse_worker.kernels.layout import PackedWeight


def keep_mask(x: torch.Tensor, threshold: torch.Tensor,
              col_scale: torch.Tensor | None = None) -> torch.Tensor:
    """`[B, in]` bool: channel j of token b is kept iff `|x_bj|·col_scale_j > threshold`."""
    score = x.abs() if x.dtype == torch.float32 else x.abs().float()  # [B, in]
    if col_scale is not None:
        score = score * col_scale
    return score > threshold


def _epilogue(pw: PackedWeight, y: torch.Tensor) -> torch.Tensor:
    """Gated groups: `[B, 2N]` -> `silu(gate) * up` `[B, N]`; others unchanged."""
    if not pw.gated:
        return y
    n = pw.out_features
    return F.silu(y[:, :n]) * y[:, n:]


def dense_matmul(x: torch.Tensor, pw: PackedWeight, threshold: torch.Tensor | None = None,
                 col_scale: torch.Tensor | None = None) -> torch.Tensor:
    """`x @ W_t` over all rows (cuBLAS on CUDA) plus the gated epilogue. `[B, in] -> [B, N]`.

    With a threshold, x is masked first: same result as the sparse path, dense cost (the path
    the crossover table picks where skipping rows does not pay).
    """
    if threshold is not None:
        x = torch.where(keep_mask(x, threshold, col_scale), x, torch.zeros_like(x))  # [B, in]
    if x.device.type == "cpu" and pw.w_t.dtype in (torch.bfloat16, torch.float16):
        rows = torch.arange(pw.in_features)  # [in]: every row, converted on the fly
        y = torch.cat([_bag(pw.w_t, rows, xb) for xb in x])  # [B, out]
        return _epilogue(pw, y).to(x.dtype)
    return _epilogue(pw, torch.mm(x.to(pw.w_t.dtype), pw.w_t)).to(x.dtype)


def _bag(w_t: torch.Tensor, idx: torch.Tensor, x_row: torch.Tensor) -> torch.Tensor:
    """One token: `sum_j x_row[idx_j] * w_t[idx_j]` reading only rows `idx`. `[in]` -> `[1, out]`."""
    weights = x_row.index_select(0, idx)  # [kept]
    if weights.dtype != w_t.dtype:
        weights = weights.to(w_t.dtype)
    offsets = torch.zeros(1, dtype=torch.long)  # [1]
    return F.embedding_bag(idx, w_t, offsets, mode="sum", per_sample_weights=weights)


def sparse_matmul_torch(x: torch.Tensor, pw: PackedWeight, threshold: torch.Tensor,
                        col_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Input-sparse `[B, in] -> [B, N]` reading only each token's kept weight rows."""
    keep = keep_mask(x, threshold, col_scale)  # [B, in]
    if x.shape[0] == 1:  # the decode hot path on the CPU: no per-row split and concat
        y = _bag(pw.w_t, keep[0].nonzero().squeeze(1), x[0])  # [1, out]
    else:
        y = torch.cat([_bag(pw.w_t, k.nonzero().squeeze(1), xb) for k, xb in zip(keep, x)])
    y = _epilogue(pw, y)  # [B, N]
    return y if y.dtype == x.dtype else y.to(x.dtype)


def masked_reference(x: torch.Tensor, pw: PackedWeight, threshold: torch.Tensor,
                     col_scale: torch.Tensor | None = None) -> torch.Tensor:
    """The contract in float64: `(x * keep) @ W_t`, gated epilogue included. `[B, in] -> [B, N]`."""
    keep = keep_mask(x, threshold, col_scale)  # [B, in]
    xm = torch.where(keep, x, torch.zeros_like(x)).double()  # [B, in]
    y = xm @ pw.w_t.double()  # [B, out]
    if pw.gated:
        n = pw.out_features
        y = F.silu(y[:, :n]) * y[:, n:]
    return y
