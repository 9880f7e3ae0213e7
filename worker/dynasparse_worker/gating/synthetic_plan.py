"""A synthetic calibrated plan for random-weight models (`dynasparse bench --shape ...`, `serve`).

Random weights have no calibration text worth the name, yet the benchmark needs a `PlanTable` of the
same kind the real planner makes (a monotone path of levels from dense to a floor, each with width
thresholds and a depth plan) to time the gated engine at the H200's Llama-3-8B shape. This builds
one from measured activations:

* width: per (layer, group), |x| of the projection inputs over a few random-token forward passes;
  the threshold of level k is the quantile of |x| at the width sparsity that level needs;
* depth: a `depth_share` of the bytes a level saves comes from whole attention/MLP halves, skipped
  from the second-to-last layer downwards (MLP first, it holds most bytes), a growing prefix so the
  levels stay monotone; the first and last layers are never skipped. `depth_share=None` takes the
  share per batch bucket that the calibrated planner chose on the default model (`PLANNER_DEPTH_SHARE`):
  width only at one sequence, depth only from 8 sequences up, where the union of active channels
  leaves width gates little to skip;
* expected loss: KL(dense‖sparse) per token, measured at each level on random tokens through the
  gated HF model (meaningless for quality on random weights, but the same kind of number).

Called by `benchmarks.gated_bench`, the server for `shape:` models and the engine tests; the
benchmark's JSON says the plan is synthetic.
"""

from __future__ import annotations

from typing import Any

import torch

from dynasparse_worker.gating.planner import PlanTable
from dynasparse_worker.sparsity import (ATTENTION, MLP, NUM_GROUPS, NUM_HALVES, HalfBytes,
                                        total_bytes, width_sparsity)


# Share of a level's saved bytes that the calibrated planner took from skipped halves, per batch
# bucket edge, on SmolLM2-135M-Instruct (calibration version 2, budgets 0.75 and 0.5): 0 / 0 at one
# sequence, 0 / 0.4 at 2, 0.92 / 0.86 at 4, 1.0 / 1.0 from 8 up. Used when no fixed share is given.
PLANNER_DEPTH_SHARE = {1: 0.0, 2: 0.4, 4: 0.85}  # larger buckets: 1.0


def bucket_depth_share(edge: int) -> float:
    return PLANNER_DEPTH_SHARE.get(int(edge), 1.0 if edge > 4 else 0.0)


def synthetic_calibration(gated: Any, device: torch.device, levels=(0.75, 0.5, 0.3)) -> PlanTable:
    """The plan `dynasparse serve --model shape:NAME --calibration auto` serves: levels down to the
    last of `levels` (the floor), the depth share per batch bucket as the calibrated planner chose."""
    vocab = gated.model.config.vocab_size
    return synthetic_table(gated, gated.half_bytes(), list(levels), vocab, device, None)


def skip_order(num_layers: int) -> list[tuple[int, int]]:
    """(layer, half) in the order depth plans drop them: MLP then attention, from layer L-2 down."""
    return [(layer, half) for layer in range(num_layers - 2, 0, -1) for half in (MLP, ATTENTION)]


def level_depth(budget: float, depth_share: float, half_bytes: HalfBytes) -> torch.Tensor:
    """[L, 2] keep flags: the longest prefix of `skip_order` within depth_share · (1 - budget)."""
    target = depth_share * (1.0 - budget) * total_bytes(half_bytes)
    keep = torch.ones(len(half_bytes), NUM_HALVES)
    skipped = 0.0
    for layer, half in skip_order(len(half_bytes)):
        size = half_bytes[layer][half]
        if skipped + size > target:
            break
        keep[layer, half] = 0.0
        skipped += size
    return keep


@torch.inference_mode()
def activation_samples(gated: Any, vocab: int, device: torch.device, passes: int = 2,
                       tokens: int = 64, per_group: int = 8192) -> list[list[torch.Tensor]]:
    """|x| of each (layer, group) input over `passes` random-token forwards -> [L][4] of [n] fp32."""
    blocks = gated.structure.blocks
    samples: list[list[list[torch.Tensor]]] = [[[] for _ in range(NUM_GROUPS)] for _ in blocks]
    hooks = []
    for layer, block in enumerate(blocks):
        for group in range(NUM_GROUPS):
            def hook(module, args, layer=layer, group=group):
                flat = args[0].detach().abs().float().reshape(-1)  # [tokens * in]
                pick = torch.randint(0, flat.numel(), (per_group,), device=flat.device)
                samples[layer][group].append(flat[pick].cpu())
            hooks.append(block.groups[group][0].module.register_forward_pre_hook(hook))
    generator = torch.Generator().manual_seed(1)
    try:
        for _ in range(passes):
            ids = torch.randint(0, vocab, (1, tokens), generator=generator).to(device)
            gated.model(ids, use_cache=False)
    finally:
        for handle in hooks:
            handle.remove()
    return [[torch.cat(group) for group in layer] for layer in samples]


@torch.inference_mode()
def measure_kl(gated: Any, table: PlanTable, vocab: int, device: torch.device,
               tokens: int = 64) -> list[float]:
    """KL(dense‖sparse) per token at each level, on one random-token sequence."""
    ids = torch.randint(0, vocab, (1, tokens), generator=torch.Generator().manual_seed(2)).to(device)
    gated.set_budget(1.0)
    dense = torch.log_softmax(gated.model(ids, use_cache=False).logits.float(), -1)  # [1, T, V]
    losses = []
    for budget in table.budgets.tolist():
        gated.set_budget(float(budget))
        sparse = torch.log_softmax(gated.model(ids, use_cache=False).logits.float(), -1)
        losses.append(float((dense.exp() * (dense - sparse)).sum(-1).mean()))
    gated.set_budget(1.0)
    return losses


def synthetic_table(gated: Any, half_bytes: HalfBytes, budgets: list[float],
                    vocab: int, device: torch.device, depth_share: float | None = 0.5) -> PlanTable:
    """Build, attach and return a synthetic `PlanTable` with levels at `budgets` (1.0 added).

    `depth_share`: the share of each level's saved bytes taken by skipped halves, the same in every
    batch bucket; None: per bucket, as the calibrated planner does (`bucket_depth_share`)."""
    levels = sorted({1.0, *[round(float(b), 6) for b in budgets]}, reverse=True)
    samples = activation_samples(gated, vocab, device)  # [L][4]
    edges = gated.state.bucket_edges
    nb = len(edges)
    num_layers = len(half_bytes)
    thresholds = torch.zeros(len(levels), nb, num_layers, NUM_GROUPS)
    keeps = torch.ones(len(levels), nb, num_layers, NUM_HALVES)
    for bucket, edge in enumerate(edges):
        share = bucket_depth_share(edge) if depth_share is None else depth_share
        for k, budget in enumerate(levels):
            keep = level_depth(budget, share, half_bytes)  # [L, 2]
            width = width_sparsity(budget, keep.tolist(), half_bytes)
            for layer in range(num_layers):
                for group in range(NUM_GROUPS):
                    if width > 0:
                        thresholds[k, bucket, layer, group] = torch.quantile(samples[layer][group], width)
            keeps[k, bucket] = keep
    thresholds = thresholds.cummax(0).values  # levels only ever get sparser (the planner's contract)
    col_scale = [[torch.ones(block.in_features(g)) for g in range(NUM_GROUPS)]
                 for block in gated.structure.blocks]
    table = PlanTable(bucket_edges=tuple(edges),
                      budgets=torch.tensor(levels, dtype=torch.float64), thresholds=thresholds,
                      layer_keep=keeps, expected_loss=torch.zeros(len(levels), nb),
                      col_scale=col_scale)
    gated.attach(table)
    losses = measure_kl(gated, table, vocab, device)
    table.expected_loss.copy_(torch.tensor(losses)[:, None].expand(-1, nb))
    return table
