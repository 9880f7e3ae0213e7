"""Greedy allocation of sparsity across (layer, group) and depth halves: one marginal price `λ`.

Skipping input channel j of group g at one token costs ≈ ½·score_j² of KL(dense‖sparse) (score =
|x_j|·sqrt(E[g_j²]), g the gradient of a sampled log-likelihood: a diagonal Fisher estimate) and saves
`row_elements_g / total` of the decode weight bytes. Greedy by cost per byte is then a single price:
group g keeps channel j iff score_j > sqrt(2 λ row_g / total). A depth half (attention or MLP of one
layer) is skipped when its own cost per byte (½E[(g·y)²]) is below λ (a skipped attention half
still reads its key/value rows: the KV cache stays whole, so only the query and output bytes count).
For each budget level and batch bucket we bisect λ to hit the byte target (at bucket B, a channel's
bytes are saved only when all B tokens skip it) and keep the cheaper of the mixed plan and a
depth-only plan. Pure tensor code, no model: called by `gating.calibrate`; tested on synthetic
statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dynasparse_worker.sparsity import groups_to_halves

_POINTS = 4096  # quantile points kept per (layer, group, bucket) distribution


@dataclass
class GroupDistributions:
    """Pooled score distributions (over tokens × channels), summarised at `_POINTS` quantiles."""

    sorted_scores: torch.Tensor  # [NB, G, P] ascending, per bucket the max over B tokens
    cum_cost: torch.Tensor  # [G, P] ½·Σ s² of the per-token distribution up to each point, per token
    sorted_single: torch.Tensor  # [G, P] per-token scores (bucket 1)
    channels: torch.Tensor  # [G] input channels per group


_SORTED = 1 << 17  # elements sorted per distribution (random subset beyond this)


def _subsample(values: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    if values.numel() <= _SORTED:
        return values
    return values[torch.randint(0, values.numel(), (_SORTED,), generator=generator)]


def summarise(samples: list[torch.Tensor], bucket_edges, generator: torch.Generator) -> GroupDistributions:
    """`samples[G]`: [S, in] scores of S calibration tokens → quantile summaries per bucket."""
    nb, g_count = len(bucket_edges), len(samples)
    sorted_scores = torch.empty(nb, g_count, _POINTS)
    cum_cost = torch.empty(g_count, _POINTS)
    for gi, scores in enumerate(samples):
        scores = scores.float()  # [S, in]
        tokens = scores.shape[0]
        flat = _subsample(scores.reshape(-1), generator)  # [<=_SORTED] an unbiased subset
        single = flat.sort().values
        picks = torch.linspace(0, single.numel() - 1, _POINTS).round().long()  # [P]
        scale = scores.numel() / single.numel() / tokens  # subset sums -> per-token sums
        cost = (0.5 * single.double() ** 2).cumsum(0) * scale  # per-token KL of skipping up to here
        cum_cost[gi] = cost[picks].float()
        sorted_scores[0, gi] = single[picks]
        perm = torch.randperm(tokens, generator=generator)
        for bi, edge in enumerate(bucket_edges):
            size = min(int(edge), tokens)
            if bi == 0 and size == 1:
                continue
            usable = tokens // size * size
            union = scores[perm[:usable]].reshape(-1, size, scores.shape[1]).amax(1)  # [S/B, in]
            ordered = _subsample(union.reshape(-1), generator).sort().values
            sorted_scores[bi, gi] = ordered[torch.linspace(0, ordered.numel() - 1, _POINTS).round().long()]
    channels = torch.tensor([s.shape[1] for s in samples], dtype=torch.float64)
    return GroupDistributions(sorted_scores, cum_cost, sorted_scores[0].clone(), channels)


def _width(dist: GroupDistributions, bucket: int, thresholds: torch.Tensor):
    """Fractions of channels skipped at `bucket`, and per-token cost, for thresholds [K, G] → [K, G] x2."""
    t = thresholds.t().contiguous()  # [G, K]
    frac_bucket = torch.searchsorted(dist.sorted_scores[bucket], t, right=True) / _POINTS  # [G, K]
    count = torch.searchsorted(dist.sorted_single, t, right=True)  # [G, K]
    picked = dist.cum_cost.gather(1, (count - 1).clamp(min=0))  # [G, K]
    cost = torch.where(count > 0, picked, torch.zeros(()))  # [G, K]
    return frac_bucket.t().double(), cost.t().double()


@dataclass
class Allocation:
    """Everything the allocator needs beyond the score distributions."""

    group_elements: torch.Tensor  # [L, 4] weight elements per group
    half_cost: torch.Tensor  # [L, 2] expected KL per token of skipping each half
    bucket_edges: tuple[int, ...]
    # [L, 2] elements a skipped half does not read (a skipped attention half still runs its key and
    # value projections for the KV cache); None = the whole half
    skip_elements: torch.Tensor | None = None

    def build(self, dist: GroupDistributions, budgets: list[float]):
        """→ thresholds [K, NB, L, 4], layer_keep [K, NB, L, 2], estimated loss [K, NB]."""
        nl = self.group_elements.shape[0]
        k, nb = len(budgets), len(self.bucket_edges)
        targets = 1.0 - torch.tensor(budgets, dtype=torch.float64)  # [K] byte fraction to skip
        out_t = torch.zeros(k, nb, nl, 4)
        out_keep = torch.ones(k, nb, nl, 2)
        out_loss = torch.zeros(k, nb)
        for bi in range(nb):
            mixed = self._solve(dist, bi, targets, width=True)
            depth = self._solve(dist, bi, targets, width=False)
            use_depth = depth[2] < mixed[2]  # [K] the cheaper plan that meets the target
            out_t[:, bi] = torch.where(use_depth.view(k, 1, 1), depth[0], mixed[0])
            out_keep[:, bi] = torch.where(use_depth.view(k, 1, 1), depth[1], mixed[1])
            out_loss[:, bi] = torch.where(use_depth, depth[2], mixed[2]).float()
        dense = targets <= 0
        out_t[dense], out_keep[dense], out_loss[dense] = 0.0, 1.0, 0.0
        _make_monotone(out_t, out_keep, out_loss)
        return out_t, out_keep, out_loss

    def _evaluate(self, dist, bucket, lam: torch.Tensor, width: bool):
        """Plans at prices `lam` [K] → thresholds [K, L, 4], keep [K, L, 2], loss [K], saved [K]."""
        nl = self.group_elements.shape[0]
        share = (self.group_elements.double() / float(self.group_elements.sum())).reshape(-1)  # [G]
        row_share = share / dist.channels  # [G] bytes share per skipped channel
        if width:
            thresholds = (2 * lam.view(-1, 1) * row_share.view(1, -1)).sqrt()  # [K, G]
        else:
            thresholds = torch.zeros(lam.numel(), share.numel(), dtype=torch.float64)
        frac, cost = _width(dist, bucket, thresholds.float())  # [K, G] x2
        saved_w = groups_to_halves((frac * share).view(-1, nl, 4))  # [K, L, 2]
        cost_w = groups_to_halves(cost.view(-1, nl, 4))  # [K, L, 2]
        if self.skip_elements is None:
            half_share = groups_to_halves(share.view(nl, 4))  # [L, 2]
        else:
            half_share = self.skip_elements.double() / float(self.group_elements.sum())  # [L, 2]
        half_cost = self.half_cost.double()  # [L, 2]
        net_bytes = (half_share - saved_w).clamp(min=1e-12)
        skip = (half_cost - cost_w) / net_bytes < lam.view(-1, 1, 1)  # [K, L, 2]
        saved = torch.where(skip, half_share, saved_w).sum((1, 2))  # [K]
        loss = torch.where(skip, half_cost, cost_w).sum((1, 2))  # [K]
        return thresholds.view(-1, nl, 4).float(), (~skip).float(), loss, saved

    def _solve(self, dist, bucket, targets: torch.Tensor, width: bool):
        """Bisection on log2 λ, all levels at once: the cheapest price whose plan meets each target."""
        lo = torch.full_like(targets, -60.0)
        hi = torch.full_like(targets, 40.0)
        for _ in range(48):
            mid = (lo + hi) / 2
            saved = self._evaluate(dist, bucket, 2.0 ** mid, width)[3]
            ok = saved >= targets
            hi = torch.where(ok, mid, hi)
            lo = torch.where(ok, lo, mid)
        thresholds, keep, loss, saved = self._evaluate(dist, bucket, 2.0 ** hi, width)
        loss = torch.where(saved >= targets - 1e-9, loss, torch.full_like(loss, float("inf")))
        return thresholds, keep, loss


def _make_monotone(thresholds, keep, loss) -> None:
    """Along levels (denser → sparser): thresholds never decrease, skipped halves stay skipped."""
    for ki in range(1, thresholds.shape[0]):
        thresholds[ki] = torch.maximum(thresholds[ki], thresholds[ki - 1])
        keep[ki] = torch.minimum(keep[ki], keep[ki - 1])
        loss[ki] = torch.maximum(loss[ki], loss[ki - 1])


def uniform_thresholds(samples: list[torch.Tensor], sparsities: list[float]) -> torch.Tensor:
    """Baseline: per-group |x| quantiles so every group skips the same fraction. → [Q, G]"""
    out = torch.zeros(len(sparsities), len(samples))
    q = torch.tensor(sparsities, dtype=torch.float32)
    for gi, values in enumerate(samples):
        flat = values.float().reshape(-1)
        if flat.numel() > 8_000_000:
            flat = flat[torch.linspace(0, flat.numel() - 1, 8_000_000).long()]
        out[:, gi] = torch.quantile(flat, q.clamp(0, 1))
    out[q <= 0] = 0.0
    return out
