"""Plain-torch paths of the input-sparse contract: the CPU sparse path, the dense path, the reference.

`dynasparse_worker.kernels.linear` calls `sparse_matmul_torch` on the CPU (the demo and e2e run
there) and `dense_matmul` wherever the crossover table says dense wins; the tests and the GPU
suite compare every kernel against `masked_reference`.

CPU sparse path: each token's kept channels (`|x_j|·col_scale_j > threshold`) become one bag of
`F.embedding_bag(mode="sum", per_sample_weights=x_kept)` over the input-major weight, which
reads only the kept rows and sums them weighted by `x` in one pass, with no gathered copy of
the weight (`index_select` would copy the kept rows first, and is slow on this build).
One call per token; at batch 1 that token's kept rows are split into one bag per torch thread (the
op parallelises over bags only). Many bags in one call entered an OpenMP region that, on a *loaded*
2-core machine, took 10-50x longer than the work (measured here), so batches still call per token. With bf16 weights (`pack_projection(
..., dtype=torch.bfloat16)`) the dense CPU path also runs as embedding_bag over all rows, since
bf16 `mm` has no fast kernel on AVX2 CPUs while embedding_bag converts rows on the fly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dynasparse_worker.kernels.layout import PackedWeight
from dynasparse_worker.sparsity import gate_score, keep_mask


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


_ONE_BAG = torch.zeros(1, dtype=torch.long)  # [1] embedding_bag offsets: one bag from index 0


_SPLIT_MIN_ROWS = 64  # below this many kept rows one bag is faster than splitting


def _bag(w_t: torch.Tensor, idx: torch.Tensor, x_row: torch.Tensor, split: bool = False) -> torch.Tensor:
    """One token: `sum_j x_row[idx_j] * w_t[idx_j]` reading only rows `idx`. `[in]` -> `[1, out]`.

    Calls the aten op directly: `F.embedding_bag`'s Python argument checks cost about as much as
    the op's own dispatch, and this runs once per projection per decode step. With `split`, the
    kept rows go into one bag per torch thread and the bags are summed: embedding_bag runs its
    bags in parallel but each bag on one thread, so a single bag leaves the other cores idle
    (2 threads, 30 layers of the default model at 50 % kept: 21.3 -> 16.6 ms, cold weights).
    """
    weights = x_row.index_select(0, idx)  # [kept]
    if weights.dtype != w_t.dtype:
        weights = weights.to(w_t.dtype)
    threads = torch.get_num_threads() if split else 1
    if threads > 1 and idx.numel() >= _SPLIT_MIN_ROWS:
        offsets = _split_offsets(idx.numel(), threads)  # [threads]
        parts = torch.embedding_bag(w_t, idx, offsets, False, 0, False, weights, False, None)[0]
        return parts.sum(0, keepdim=True)  # [1, out]
    return torch.embedding_bag(w_t, idx, _ONE_BAG, False, 0, False, weights, False, None)[0]


_OFFSETS: dict[tuple[int, int], torch.Tensor] = {}


def _split_offsets(rows: int, bags: int) -> torch.Tensor:
    """`[bags]` start offsets splitting `rows` indices evenly, cached (one tensor per row count:
    building it each call is one more small op per projection per decode step)."""
    offsets = _OFFSETS.get((rows, bags))
    if offsets is None:
        offsets = _OFFSETS[rows, bags] = torch.arange(bags) * (rows // bags)
    return offsets


def sparse_matmul_torch(x: torch.Tensor, pw: PackedWeight, threshold: torch.Tensor,
                        col_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Input-sparse `[B, in] -> [B, N]` reading only each token's kept weight rows."""
    if x.shape[0] == 1:  # the decode hot path on the CPU: one token, fewest small ops
        y = _bag(pw.w_t, kept_rows(x[0], threshold, col_scale), x[0], split=True)  # [1, out]
    else:
        keep = keep_mask(x, threshold, col_scale)  # [B, in]
        y = torch.cat([_bag(pw.w_t, k.nonzero().squeeze(1), xb) for k, xb in zip(keep, x)])
    y = _epilogue(pw, y)  # [B, N]
    return y if y.dtype == x.dtype else y.to(x.dtype)


def kept_rows(x_row: torch.Tensor, threshold: torch.Tensor,
              col_scale: torch.Tensor | None = None) -> torch.Tensor:
    """`[kept]` int64 indices of one token's kept channels, ascending (the `keep_mask` rule).

    Three small ops on float32 (abs, in-place scale, compare) and one nonzero: at batch 1 these
    run 120 times per step on the default model, so each avoided op is ~0.5 ms per step.
    """
    return torch.nonzero(gate_score(x_row, col_scale) > threshold).squeeze(1)  # [kept]


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
