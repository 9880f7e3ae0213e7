"""Launch configurations of the Triton kernels and the measured sparse/dense crossover table.

`pick_config` is called by `triton_sparse` for every launch (a dict lookup, then a heuristic);
`choose(batch, sparsity)` is called by the engine when it builds a decode step for a batch bucket,
to decide whether the input-sparse kernel or the dense matmul runs there.

The tables below come from `scripts/gpu/kernels_suite.py` on one H200 (Llama-3-8B shapes, bf16);
the numbers in comments are that run's. Torch-free so the planner can import it anywhere.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Literal

SM_COUNT = 132  # H200 / H100 SXM multiprocessors; the heuristic aims at a few waves of programs


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes and split-K factor of one launch."""

    block_n: int = 128
    """Output columns per program (contiguous bytes per weight row = 2 * block_n)."""
    block_k: int = 64
    """Input channels (weight rows) per inner step."""
    split_k: int = 8
    """Programs sharing one column block along the input dimension (upper bound)."""
    num_warps: int = 4
    num_stages: int = 2


# (block_b, in, out, gated) -> config measured best on the H200 (filled in from the suite's JSON).
TUNED: dict[tuple[int, int, int, bool], KernelConfig] = {}


def block_rows(batch: int) -> int:
    """Rows one program holds: 1 for a single token, else the batch padded to 16, 32 or 64."""
    if batch <= 1:
        return 1
    size = 16
    while size < batch and size < 64:
        size *= 2
    return size


def pick_config(batch: int, k: int, n_out: int, gated: bool, waves: float = 4.0) -> KernelConfig:
    """The tuned config for this shape if measured, else a heuristic aiming at `waves` x SMs programs."""
    tuned = TUNED.get((block_rows(batch), k, n_out, gated))
    if tuned is not None:
        return tuned
    if batch <= 1:
        block_n, block_k, warps = 128, 32 if gated else 64, 4
    else:
        block_n, block_k, warps = 64, 64, 4
    n_blocks = -(-n_out // block_n)
    split = max(1, min(32, round(waves * SM_COUNT / n_blocks), k // (2 * block_k)))
    return KernelConfig(block_n=block_n, block_k=block_k, split_k=split, num_warps=warps)


Choice = Literal["sparse", "dense"]

# Batch bucket upper edges and, per bucket, the union sparsity (fraction of weight rows skipped)
# from which the input-sparse kernel beats dense cuBLAS. 1.01 = never.
CUDA_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
CUDA_CROSSOVER: tuple[float, ...] = (0.0, 0.1, 0.1, 0.2, 0.25, 0.4, 1.01)

# The CPU path (embedding_bag over kept rows vs one dense matmul), measured on a 2-core CPU.
CPU_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16)
CPU_CROSSOVER: tuple[float, ...] = (0.25, 0.35, 0.45, 0.6, 1.01)


def crossover(batch: int, device_type: str = "cuda") -> float:
    """Smallest union sparsity at which the sparse path pays for a batch of `batch` rows."""
    buckets, table = (CPU_BUCKETS, CPU_CROSSOVER) if device_type == "cpu" else (
        CUDA_BUCKETS, CUDA_CROSSOVER)
    i = bisect.bisect_left(buckets, batch)
    return 1.01 if i >= len(buckets) else table[i]


def choose(batch: int, sparsity: float, device_type: str = "cuda") -> Choice:
    """`"sparse"` when the input-sparse kernel is faster than dense for this batch and sparsity.

    `sparsity` is the expected fraction of weight rows the batch skips (the union over its
    tokens, so it falls as the batch grows); at or above the bucket's measured crossover the
    sparse kernel wins.
    """
    return "sparse" if sparsity >= crossover(batch, device_type) else "dense"
