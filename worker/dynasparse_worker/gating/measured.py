"""Allocation by measured error: each decoder block's sparsity path is chosen greedily by the error it
measures at the block's output, then one price per level spreads the bytes across blocks.

Why measured: a second-order estimate from gradients at a projection's input misjudges large or
normalised perturbations (Gemma's sandwich norms make a half's output scale-invariant, so the
gradient says skipping it is free when it is fatal). Here every candidate is run: the block is called
alone on captured inputs (its own attention mask, positions, rotary tables) with the gates set, and the
change of its output is weighted by the diagonal Fisher at that output (mean squared gradient of a
sampled log-likelihood), which turns it into an estimate of KL(dense‖sparse) per token.

Per block (TEAL-style greedy): starting dense, repeatedly raise by one step (a fixed fraction of
channels) the skipped fraction of the group (attn_in, attn_out, mlp_in, mlp_out) whose increase costs
the least measured error per weight byte; the path records thresholds and cost after every step.
Across blocks, level by level: for a price λ each block takes the step minimising cost − λ·bytes, and
λ is bisected to meet the level's byte target, per batch bucket (at bucket B a channel's bytes are
saved only when all B tokens skip it). A depth-only plan (whole halves skipped, their cost also
measured at the block's output) is kept where it is cheaper.

Cost: blocks × (steps per group × 4 groups) × ~3 block calls on the captured tokens, i.e. linear in
layers and in captured tokens. Called by `gating.calibrate`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dynasparse_worker.gating.allocation import Allocation, GroupDistributions, _make_monotone, _width


@dataclass
class BlockInputs:
    """One block's captured call: positional and keyword arguments, and its dense output."""

    args: tuple
    kwargs: dict
    dense: torch.Tensor  # [B, T, H]


def _hidden(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


@torch.no_grad()
def capture_blocks(gated, ids: torch.Tensor) -> list[BlockInputs]:
    """Run the dense model on `ids` [N, T] once and keep every block's inputs and output."""
    captured: list[BlockInputs | None] = [None] * gated.structure.num_layers
    handles = []
    for layer, module in enumerate(gated.structure.layers):
        def hook(module, args, kwargs, output, layer=layer):
            kept = {k: v for k, v in kwargs.items() if k not in ("past_key_values", "past_key_value")}
            captured[layer] = BlockInputs(args, kept, _hidden(output).detach().clone())
        handles.append(module.register_forward_hook(hook, with_kwargs=True))
    try:
        gated.model(ids.to(next(gated.model.parameters()).device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return captured  # type: ignore[return-value]


class BlockProbe:
    """Measures the Fisher-weighted output error of one block under given gates (other blocks idle)."""

    def __init__(self, gated, layer: int, inputs: BlockInputs, out_fisher: torch.Tensor):
        self.gated, self.layer, self.inputs = gated, layer, inputs
        self.weight = out_fisher.to(inputs.dense.device, torch.float32)  # [H]
        self.tokens = inputs.dense.numel() // inputs.dense.shape[-1]
        self.calls = 0

    @torch.no_grad()
    def error(self, thresholds: torch.Tensor, keep: torch.Tensor | None = None) -> float:
        """½ Σ_h F_h (y_h − y_dense,h)² per token at thresholds [4] and half keep [2]."""
        state = self.gated.state
        state.active_thresholds[self.layer].copy_(thresholds)
        state.active_layer_keep[self.layer].copy_(keep if keep is not None else torch.ones(2))
        try:
            out = _hidden(self.gated.structure.layers[self.layer](*self.inputs.args, **self.inputs.kwargs))
        finally:
            state.active_thresholds[self.layer].zero_()
            state.active_layer_keep[self.layer].fill_(1.0)
        self.calls += 1
        delta = (out - self.inputs.dense).float()  # [B, T, H]
        return 0.5 * float((delta.pow(2) * self.weight).sum()) / self.tokens


def level_thresholds(scores: list[torch.Tensor], steps: int) -> torch.Tensor:
    """Per-token score quantiles at fractions 0, 1/steps, ..., (steps-1)/steps. G x [S, in] → [G, steps]."""
    out = torch.zeros(len(scores), steps)
    fractions = torch.arange(steps, dtype=torch.float64) / steps
    for gi, values in enumerate(scores):
        flat = values.float().reshape(-1).sort().values  # [S*in]
        picks = (fractions * (flat.numel() - 1)).round().long()  # [steps]
        out[gi] = flat[picks]
    out[:, 0] = 0.0  # level 0 is dense
    return out


def greedy_path(probe: BlockProbe, grid: torch.Tensor, elements: torch.Tensor):
    """Greedy levels for one block. grid [4, steps] thresholds, elements [4] → (thresholds [P, 4], cost [P])."""
    steps = grid.shape[1]
    level = [0, 0, 0, 0]
    cost = 0.0
    path_t, path_c = [torch.zeros(4)], [0.0]
    while any(lv < steps - 1 for lv in level):
        best = None
        for group in range(4):
            if level[group] >= steps - 1:
                continue
            trial = list(level)
            trial[group] += 1
            value = probe.error(grid[torch.arange(4), torch.tensor(trial)])
            ratio = (value - cost) / float(elements[group])
            if best is None or ratio < best[0]:
                best = (ratio, trial, value)
        _, level, cost = best
        path_t.append(grid[torch.arange(4), torch.tensor(level)].clone())
        path_c.append(cost)
    return torch.stack(path_t), torch.tensor(path_c, dtype=torch.float64)


def half_costs(probe: BlockProbe) -> torch.Tensor:
    """Measured cost of skipping the attention half, the MLP half. → [2]"""
    zero = torch.zeros(4)
    return torch.tensor([probe.error(zero, torch.tensor([0.0, 1.0])),
                         probe.error(zero, torch.tensor([1.0, 0.0]))], dtype=torch.float64)


def build_levels(paths_t: torch.Tensor, paths_c: torch.Tensor, dist: GroupDistributions,
                 depth: Allocation, budgets: list[float]):
    """Per-block paths [L, P, 4] / [L, P] → thresholds [K, NB, L, 4], layer_keep [K, NB, L, 2], loss [K, NB]."""
    nl, p = paths_c.shape
    k, nb = len(budgets), len(depth.bucket_edges)
    share = (depth.group_elements.double() / float(depth.group_elements.sum()))  # [L, 4]
    targets = 1.0 - torch.tensor(budgets, dtype=torch.float64)  # [K]
    flat_t = paths_t.permute(1, 0, 2).reshape(p, nl * 4)  # [P, L*4]
    out_t = torch.zeros(k, nb, nl, 4)
    out_keep = torch.ones(k, nb, nl, 2)
    out_loss = torch.zeros(k, nb)
    cost = paths_c.t()  # [P, L]
    for bi in range(nb):
        frac, _ = _width(dist, bi, flat_t)  # [P, L*4]
        saved = (frac.view(p, nl, 4) * share).sum(-1)  # [P, L]

        def pick(lam):  # lam [K] → chosen step [K, L], saved [K], cost [K]
            objective = cost.unsqueeze(0) - lam.view(-1, 1, 1) * saved.unsqueeze(0)  # [K, P, L]
            step = objective.argmin(1)  # [K, L]
            got = saved.t().gather(1, step.t()).t().sum(1)  # [K]
            spent = cost.t().gather(1, step.t()).t().sum(1)  # [K]
            return step, got, spent

        lo = torch.full_like(targets, -60.0)
        hi = torch.full_like(targets, 40.0)
        for _ in range(48):
            mid = (lo + hi) / 2
            ok = pick(2.0 ** mid)[1] >= targets
            hi = torch.where(ok, mid, hi)
            lo = torch.where(ok, lo, mid)
        step, got, spent = pick(2.0 ** hi)
        spent = torch.where(got >= targets - 1e-9, spent, torch.full_like(spent, float("inf")))
        width_t = paths_t[torch.arange(nl).view(1, nl), step]  # [K, L, 4]
        depth_t, depth_keep, depth_loss = depth._solve(dist, bi, targets, width=False)
        use_depth = depth_loss < spent  # [K]
        out_t[:, bi] = torch.where(use_depth.view(k, 1, 1), depth_t, width_t)
        out_keep[:, bi] = torch.where(use_depth.view(k, 1, 1), depth_keep, torch.ones(k, nl, 2))
        out_loss[:, bi] = torch.where(use_depth, depth_loss, spent).float()
    dense = targets <= 0
    out_t[dense], out_keep[dense], out_loss[dense] = 0.0, 1.0, 0.0
    _make_monotone(out_t, out_keep, out_loss)
    return out_t, out_keep, out_loss
