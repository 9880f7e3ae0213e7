"""Greedy allocation of sparsity across (layer, group) and depth halves: one marginal price `λ`.

Skipping input channel j of group g at one token costs ≈ ½·score_j² of KL(dense‖sparse) (score =
|x_j|·sqrt(E[g_j²]), g the gradient of a sampled log-likelihood: a diagonal Fisher estimate) and saves
`row_elements_g / total` of the decode weight bytes. Greedy by cost per byte is then a single price:
group g keeps channel j iff score_j > sqrt(2 λ row_g / total). A depth half (attention or MLP of one
layer) is skipped when its own cost per byte (½E[(g·y)²]) is below λ. For each budget level and batch
bucket we bisect λ to hit the byte target (at bucket B, a channel's bytes are saved only when all B
tokens skip it) and keep the cheaper of the mixed plan and a depth-only plan. Pure tensor code, no
model: called by `gating.calibrate`; tested on synthetic statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_POINTS = 4096  # quantile points kept per (layer, group, bucket) distribution


@dataclass
class GroupDistributions:
    """Pooled score distributions (over tokens × channels), summarised at `_POINTS` quantiles."""

    sorted_scores: torch.Tensor  # [NB, G, P] ascending, per bucket the max over B tokens
    cum_cost: torch.Tensor  # [G, P] ½·Σ s² of the per-token distribution up to each point, per token
    sorted_single: torch.Tensor  # [G, P] per-token scores (bucket 1)
    channels: torch.Tensor  # [G] input channels per group


def summarise(samples: list[torch.Tensor], bucket_edges, generator: torch.Generator) -> GroupDistributions:
    """`samples[G]`: [S, in] scores of S calibration tokens → quantile summaries per bucket."""
    nb, g_count = len(bucket_edges), len(samples)
    sorted_scores = torch.empty(nb, g_count, _POINTS)
    cum_cost = torch.empty(g_count, _POINTS)
    for gi, scores in enumerate(samples):
        scores = scores.float()  # [S, in]
        tokens = scores.shape[0]
        single = scores.reshape(-1).sort().values  # [S*in]
        picks = torch.linspace(0, single.numel() - 1, _POINTS).round().long()  # [P]
        cost = (0.5 * single.double() ** 2).cumsum(0) / tokens  # [S*in] per-token KL so far
        cum_cost[gi] = cost[picks].float()
        perm = torch.randperm(tokens, generator=generator)
        for bi, edge in enumerate(bucket_edges):
            size = min(int(edge), tokens)
            usable = tokens // size * size
            union = scores[perm[:usable]].reshape(-1, size, scores.shape[1]).amax(1)  # [S/B, in]
            flat = union.reshape(-1).sort().values  # [S/B*in]
            sorted_scores[bi, gi] = flat[torch.linspace(0, flat.numel() - 1, _POINTS).round().long()]
    channels = torch.tensor([s.shape[1] for s in samples], dtype=torch.float64)
    return GroupDistributions(sorted_scores, cum_cost, sorted_scores[0].clone(), channels)


def _width(dist: GroupDistributions, bucket: int, thresholds: torch.Tensor):
    """Fractions of channels skipped at `bucket`, and per-token cost, for per-group thresholds [G]."""
    t = thresholds.unsqueeze(1)  # [G, 1]
    frac_bucket = torch.searchsorted(dist.sorted_scores[bucket], t, right=True).squeeze(1) / _POINTS  # [G]
    count = torch.searchsorted(dist.sorted_single, t, right=True).squeeze(1)  # [G]
    cost = torch.where(count > 0, dist.cum_cost.gather(1, (count - 1).clamp(min=0).unsqueeze(1)).squeeze(1),
                       torch.zeros(()))  # [G]
    return frac_bucket.double(), cost.double()


@dataclass
class Allocation:
    """Everything the allocator needs beyond the score distributions."""

    group_elements: torch.Tensor  # [L, 4] weight elements per group
    half_cost: torch.Tensor  # [L, 2] expected KL per token of skipping each half
    bucket_edges: tuple[int, ...]

    def build(self, dist: GroupDistributions, budgets: list[float]):
        """→ thresholds [K, NB, L, 4], layer_keep [K, NB, L, 2], estimated loss [K, NB]."""
        nl = self.group_elements.shape[0]
        total = float(self.group_elements.sum())
        share = (self.group_elements / total).reshape(-1)  # [G] byte share of each group
        row_share = share / dist.channels  # [G] per skipped channel
        half_share = torch.stack([share.view(nl, 4)[:, :2].sum(1), share.view(nl, 4)[:, 2:].sum(1)], 1)  # [L, 2]
        half_price = self.half_cost.double() / half_share  # [L, 2]
        k, nb = len(budgets), len(self.bucket_edges)
        out_t = torch.zeros(k, nb, nl, 4)
        out_keep = torch.ones(k, nb, nl, 2)
        out_loss = torch.zeros(k, nb)
        for bi in range(nb):
            for ki, budget in enumerate(budgets):
                if budget >= 1.0:
                    continue
                target = 1.0 - budget
                mixed = self._solve(dist, bi, row_share, share, half_price, target, nl, width=True)
                depth = self._solve(dist, bi, row_share, share, half_price, target, nl, width=False)
                best = min((p for p in (mixed, depth) if p is not None), key=lambda p: p[2], default=None)
                if best is None:
                    best = mixed or depth
                out_t[ki, bi], out_keep[ki, bi], out_loss[ki, bi] = best[0], best[1], best[2]
        _make_monotone(out_t, out_keep, out_loss)
        return out_t, out_keep, out_loss

    def _evaluate(self, dist, bucket, row_share, share, half_price, lam, nl, width):
        thresholds = (2 * lam * row_share).sqrt() if width else torch.zeros_like(row_share)  # [G]
        frac, cost = _width(dist, bucket, thresholds.float())
        w_saved = (frac * share).view(nl, 4)  # [L, 4]
        w_cost = cost.view(nl, 4)
        halves_saved = torch.stack([w_saved[:, :2].sum(1), w_saved[:, 2:].sum(1)], 1)  # [L, 2]
        halves_cost = torch.stack([w_cost[:, :2].sum(1), w_cost[:, 2:].sum(1)], 1)
        half_share = torch.stack([share.view(nl, 4)[:, :2].sum(1), share.view(nl, 4)[:, 2:].sum(1)], 1)
        net_bytes = (half_share - halves_saved).clamp(min=1e-12)
        net_cost = half_price * half_share - halves_cost
        skip = net_cost / net_bytes < lam  # [L, 2]
        saved = torch.where(skip, half_share, halves_saved).sum()
        loss = torch.where(skip, half_price * half_share, halves_cost).sum()
        return thresholds.view(nl, 4), (~skip).float(), float(loss), float(saved)

    def _solve(self, dist, bucket, row_share, share, half_price, target, nl, width):
        lo, hi = -40.0, 40.0  # bisection on log λ
        best = None
        for _ in range(40):
            mid = (lo + hi) / 2
            t, keep, loss, saved = self._evaluate(dist, bucket, row_share, share, half_price, 2.0 ** mid, nl, width)
            if saved >= target:
                hi, best = mid, (t, keep, loss)
            else:
                lo = mid
        return best


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
