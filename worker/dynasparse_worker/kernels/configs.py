"""Launch configurations of the Triton kernels and the measured sparse/dense crossover table.

`pick_config` is called by `triton_sparse` for every launch (a dict lookup, then a heuristic);
`choose(batch, sparsity)` is called by the engine when it builds a decode step for a batch bucket,
to decide whether the input-sparse kernel or the dense matmul runs there.

The tables below come from `scripts/gpu/kernels_suite.py` on one H200 (Llama-3-8B shapes, bf16,
torch 2.11, triton 3.6); that run's full JSON is `measured_h200.json` beside this file.
Torch-free so the planner can import it anywhere.
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
    compact: bool = False
    """Loop over a list of the kept rows only (`triton_compact`): work scales with kept rows."""
    fused: bool = True
    """compact: each program lists its slice's kept rows itself (one launch); False: a separate
    listing launch first."""
    dot: bool = False
    """compact, one token: `tl.dot` over the batch padded to 16 instead of elementwise FMA
    (batches of 2+ always use `tl.dot`)."""
    listed: bool = False
    """One kept-channel list per input vector, then a GEMV over it with no split-K fix-up
    (`triton_listed`); `split_k` > 1 adds fp32 partials with atomics (un-gated groups)."""


_C8 = KernelConfig(block_n=128, block_k=64, split_k=8)
# Predicated kernel (v2), best of the 50 % sweep on the H200; kept for comparison and fallback.
TUNED_PREDICATED: dict[tuple[int, int, int, bool], KernelConfig] = {
    (1, 4096, 6144, False): KernelConfig(block_n=128, block_k=64, split_k=6),  # q|k|v 18.4 us
    (1, 4096, 4096, False): _C8,  # o 14.5 us
    (1, 4096, 14336, True): KernelConfig(block_n=128, block_k=64, split_k=2),  # gate|up 53.1 us
    (1, 14336, 4096, False): _C8,  # down 35.9 us
}
def _cc(bn: int, bk: int, split: int, warps: int, stages: int = 3, dot: bool = True) -> KernelConfig:
    return KernelConfig(block_n=bn, block_k=bk, split_k=split, num_warps=warps,
                        num_stages=stages, compact=True, dot=dot)


# (batch bucket, in, out, gated) -> compacting config: best of the suite's 50 % sweep on the H200
# (measured_h200.json, 2026-11-28, v3); comment: that config's time at 50 % union sparsity.
TUNED: dict[tuple[int, int, int, bool], KernelConfig] = {
    (1, 4096, 6144, False): _cc(128, 64, 6, 4),  # q|k|v 17.5 us
    (2, 4096, 6144, False): _cc(128, 64, 6, 4),  # 18.6
    (4, 4096, 6144, False): _cc(128, 64, 6, 4),  # 19.1
    (8, 4096, 6144, False): _cc(128, 64, 6, 4),  # 21.3
    (16, 4096, 6144, False): _cc(128, 64, 6, 4),  # 25.1
    (1, 4096, 4096, False): _cc(128, 64, 8, 8, stages=2, dot=False),  # o 13.0 us (FMA)
    (2, 4096, 4096, False): _cc(128, 128, 8, 8),  # 15.0
    (4, 4096, 4096, False): _cc(128, 64, 8, 4),  # 16.2
    (8, 4096, 4096, False): _cc(128, 64, 8, 4),  # 17.2
    (16, 4096, 4096, False): _cc(128, 64, 8, 4),  # 19.9
    (1, 4096, 14336, True): _cc(64, 128, 1, 4),  # gate|up 43.4 us
    (2, 4096, 14336, True): _cc(128, 64, 2, 4),  # 47.0
    (4, 4096, 14336, True): _cc(128, 64, 2, 4),  # 49.2
    (8, 4096, 14336, True): _cc(128, 64, 2, 4),  # 53.3
    (16, 4096, 14336, True): _cc(128, 64, 2, 4),  # 54.3
    (1, 14336, 4096, False): _cc(128, 128, 8, 8),  # down 29.7 us
    (2, 14336, 4096, False): _cc(128, 128, 8, 8),  # 29.9
    (4, 14336, 4096, False): _cc(128, 128, 8, 8),  # 32.4
    (8, 14336, 4096, False): _cc(256, 64, 16, 8),  # 33.8
    (16, 14336, 4096, False): _cc(256, 64, 16, 8),  # 40.3
}


def block_rows(batch: int) -> int:
    """Rows one program holds: 1 for a single token, else the batch padded to 16, 32 or 64."""
    if batch <= 1:
        return 1
    size = 16
    while size < batch and size < 64:
        size *= 2
    return size


def batch_bucket(batch: int) -> int:
    """Key of the compacting table: 1, 2, 4, 8 or 16 (batches over 16 use 16's configs)."""
    size = 1
    while size < batch and size < 16:
        size *= 2
    return size


def pick_config(batch: int, k: int, n_out: int, gated: bool, waves: float = 2.0,
                predicated: bool = False) -> KernelConfig:
    """The tuned config for this shape if measured, else the sweep's winning pattern.

    Compacting (`compact=True`) unless `predicated`. Untuned shapes get what won most often on
    the H200: the tl.dot loop, 128 columns x 64 rows, 4 warps, 3 stages, a split giving about
    two programs per multiprocessor.
    """
    if predicated:
        tuned = TUNED_PREDICATED.get((block_rows(batch), k, n_out, gated))
    else:
        tuned = TUNED.get((batch_bucket(batch), k, n_out, gated))
    if tuned is not None:
        return tuned
    block_n, block_k = 128, 64
    n_blocks = -(-n_out // block_n)
    split = max(1, min(32, round(waves * SM_COUNT / n_blocks), k // (2 * block_k)))
    if predicated:
        return KernelConfig(block_n=block_n, block_k=block_k, split_k=split, num_warps=4)
    return _cc(block_n, block_k, split, 4)


def listed_config(batch: int, n_out: int, gated: bool) -> KernelConfig:
    """Launch config of the listed kernel (`triton_listed`) for `batch` rows and `n_out` columns.

    Best of the H200 sweep at 50 % (`scripts/gpu/results/kernels-v4.json`): un-gated groups take
    128-column blocks (one token) or 64 (a batch) with atomic splits up to about one program per
    multiprocessor; gate|up, which cannot split, 64 (one token) or 128 (a batch) columns.
    """
    if gated:
        block_n = 64 if batch <= 1 else 128
        split = 1
    else:
        block_n = 128 if batch <= 1 else 64
        split = max(1, min(4, -(-SM_COUNT // -(-n_out // block_n))))
    return KernelConfig(block_n=block_n, block_k=128 if batch <= 1 else 64, split_k=split,
                        num_warps=4, num_stages=3, compact=False, dot=batch > 1, listed=True)


Choice = Literal["sparse", "dense"]

# Batch bucket upper edges and, per bucket, the union sparsity (fraction of weight rows skipped)
# from which the compacting kernel beats dense cuBLAS for a whole layer (q|k|v + o + gate|up +
# down), measured on the H200 (v3, measured_h200.json); 1.01 = never. 32 and 64 are not
# measured with the compacting kernel (v2 lost there everywhere): dense.
CUDA_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
CUDA_CROSSOVER: tuple[float, ...] = (0.37, 0.29, 0.38, 0.44, 0.54, 1.01, 1.01)
# Per projection group and bucket 1..16 (gate|up reads the most bytes per launch and crosses
# first; o and q|k|v pay the kernel's ~7 us fixed cost on the fewest bytes). Batch 1 is measured
# inside the engine (scripts/gpu/profile_b1.py, 2026-11-29, Llama-3-8B shape, gate|up with SiLU·up
# fused): there cuBLAS runs 7-17 % faster and q|k|v and down's sparse kernel 5-25 % slower than in
# the isolated suite, which had put the crossovers at 0.40 / 0.25 / 0.16 / 0.20 and the layer's at
# 0.21; batches 2-16 are still the isolated suite's (likely optimistic by as much). o's figure is
# in the width the plan targets (its union sparsity runs ~1.5x higher).
CUDA_GROUP_CROSSOVER: dict[str, tuple[float, ...]] = {
    "attn_in": (0.65, 0.50, 0.56, 0.63, 1.01),
    "attn_out": (0.30, 0.47, 0.66, 0.65, 0.76),
    "mlp_in": (0.28, 0.23, 0.29, 0.39, 0.35),
    "mlp_out": (0.43, 0.23, 0.39, 0.37, 0.60),
}
CUDA_GROUP_CROSSOVER_B1: dict[str, float] = {g: t[0] for g, t in CUDA_GROUP_CROSSOVER.items()}

# The CPU path (one embedding_bag per token over bf16-packed rows) against the fp32 dense step,
# SmolLM2-135M shapes, 30 layers, 1 thread, on this project's shared 2-core CPU (load ~10, so
# noisy: `python3 -m dynasparse_worker.kernels.cpu_bench`). The first table (0.42 at batch 1)
# compared with `x @ W_t`, which MKL runs ~20 % faster at batch 1 than the `F.linear` on
# `[out, in]` weights the engine's dense step (and so budget 1.0) really runs; against that, and
# with the leaner batch-1 path, the bag breaks even near 15-20 % skipped (cpu clock, 2026-11-28
# 23:05: 0.92x at 10 %, 1.00x at 20 %, 1.08x at 30 %, 1.19x (min 1.51x) at 50 %), while the
# masked dense path pays 5 small ops per call on top of the full read: batch 1 now goes sparse
# from 20 %. Batch 4 (own masks, shared rows come from cache): 1.43x at 50 %. Buckets 8 and 16
# are not measured: set cautiously.
CPU_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16)
CPU_CROSSOVER: tuple[float, ...] = (0.20, 0.42, 0.40, 0.55, 0.70)


def crossover(batch: int, device_type: str = "cuda", group: str | None = None) -> float:
    """Smallest union sparsity at which the sparse path pays for a batch of `batch` rows.

    `group` (attn_in, attn_out, mlp_in, mlp_out) refines the CUDA answer per group (batch <= 16).
    """
    if device_type != "cpu" and batch <= 16 and group in CUDA_GROUP_CROSSOVER:
        return CUDA_GROUP_CROSSOVER[group][bisect.bisect_left(CUDA_BUCKETS, batch)]
    buckets, table = (CPU_BUCKETS, CPU_CROSSOVER) if device_type == "cpu" else (
        CUDA_BUCKETS, CUDA_CROSSOVER)
    i = bisect.bisect_left(buckets, batch)
    return 1.01 if i >= len(buckets) else table[i]


def choose(batch: int, sparsity: float, device_type: str = "cuda",
           group: str | None = None) -> Choice:
    """`"sparse"` when the input-sparse kernel is faster than dense for this batch and sparsity.

    `sparsity` is the expected fraction of weight rows the batch skips (the union over its
    tokens, so it falls as the batch grows); at or above the bucket's measured crossover the
    sparse kernel wins.
    """
    return "sparse" if sparsity >= crossover(batch, device_type, group) else "dense"
