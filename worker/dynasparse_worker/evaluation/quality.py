"""Side-by-side quality of dynasparse plans and the uniform |x| baseline at a list of budgets.

For each batch of held-out sequences: one dense forward (its log-probabilities, entropy and argmax
computed once and shared), then one forward per (method, budget) with the gate counters on. Per row: perplexity, its ratio to dense, mean KL(dense‖sparse) per token, top-1
agreement with dense, and the *measured* fraction of decode weight bytes skipped (bytes of the decoder
blocks' linear projections not read, mean over tokens). Budget 1.0 is the dense model itself (the
gates are exactly transparent there; tests assert it), so it costs no extra forward. Called by
`commands/eval.py`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from dynasparse_worker.gating.calibrate import UNIFORM_SPARSITIES
from dynasparse_worker.gating.planner import Plan, dense_plan


@dataclass
class Row:
    method: str  # "dynasparse" | "uniform"
    budget: float
    bytes_skipped: float
    ppl: float
    ppl_ratio: float
    kl: float
    top1: float
    expected_kl: float | None = None  # the planner's calibrated expectation (dynasparse rows only)

    def as_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def uniform_plan(gated, uniform: torch.Tensor, sparsity: float) -> Plan:
    """Same fraction of channels skipped in every (layer, group), by interpolating the |x| quantiles."""
    grid = torch.tensor(UNIFORM_SPARSITIES)
    sparsity = min(max(sparsity, 0.0), float(grid[-1]))
    hi = int(torch.searchsorted(grid, torch.tensor(sparsity)).clamp(1, len(grid) - 1))
    w = (sparsity - float(grid[hi - 1])) / float(grid[hi] - grid[hi - 1])
    plan = dense_plan(gated.state)
    plan.thresholds[:] = (1 - w) * uniform[hi - 1] + w * uniform[hi]  # [NB, L, 4] <- [L, 4]
    plan.budget = 1.0 - sparsity
    return plan


class _Accumulator:
    def __init__(self):
        self.nll = self.kl = self.agree = self.tokens = self.skipped = 0.0

    def add(self, logits, dense: "_Dense", labels, skipped):
        log = logits[:, :-1].float().log_softmax(-1)  # [B, T-1, V]
        n = labels.numel()
        self.nll += float(-log.gather(-1, labels.unsqueeze(-1)).sum())
        # KL(p‖q) = Σ p·log p − Σ p·log q; the first term is computed once per batch
        self.kl += dense.neg_entropy - float((dense.prob * log).sum())
        self.agree += float((log.argmax(-1) == dense.top1).sum())
        self.skipped += skipped * n
        self.tokens += n


class _Dense:
    """What every sparse forward of one batch is compared with, computed once."""

    def __init__(self, logits: torch.Tensor):
        log = logits[:, :-1].float().log_softmax(-1)  # [B, T-1, V]
        self.log = log
        self.prob = log.exp()  # [B, T-1, V]
        self.neg_entropy = float((self.prob * log).sum())  # Σ p·log p
        self.top1 = log.argmax(-1)  # [B, T-1]


@torch.inference_mode()
def evaluate(gated, calibration, ids: torch.Tensor, budgets: list[float], batch_size: int = 4,
             progress: bool = True) -> tuple[float, list[Row]]:
    """→ (dense perplexity, rows for both methods, budgets in the given order)."""
    model, table = gated.model, calibration.table
    device = next(model.parameters()).device
    gated.set_batch_size(1)  # per-token gates; the HF path evaluates whole sequences as bucket 1
    configs = [("dynasparse", b) for b in budgets if b < 1.0] + [("uniform", b) for b in budgets if b < 1.0]
    acc = {key: _Accumulator() for key in configs}
    dense_acc = _Accumulator()
    batches = ids.split(batch_size)
    bar = tqdm(total=len(batches) * (1 + len(configs)), desc="evaluating", disable=not progress)
    for batch in batches:
        batch = batch.to(device)  # [B, T]
        labels = batch[:, 1:]  # [B, T-1]
        gated.attach(table)  # dense, calibrated column scales
        dense = _Dense(model(batch, use_cache=False).logits)  # the one dense forward of this batch
        dense_acc.nll += float(-dense.log.gather(-1, labels.unsqueeze(-1)).sum())
        dense_acc.tokens += labels.numel()
        bar.update()
        for method, budget in configs:
            if method == "dynasparse":
                gated.attach(table)
                gated.set_budget(budget)
            else:
                gated.set_col_scale(1.0)
                gated.apply(uniform_plan(gated, calibration.uniform, 1.0 - budget))
            with gated.counting():
                logits = model(batch, use_cache=False).logits  # [B, T, V]
                skipped = gated.bytes_skipped()
            acc[(method, budget)].add(logits, dense, labels, skipped)
            del logits
            bar.update()
    bar.close()
    gated.attach(table)
    dense_ppl = math.exp(dense_acc.nll / dense_acc.tokens)
    rows = []
    for method in ("dynasparse", "uniform"):
        for budget in budgets:
            if budget >= 1.0:
                rows.append(Row(method, 1.0, 0.0, dense_ppl, 1.0, 0.0, 1.0,
                                0.0 if method == "dynasparse" else None))
                continue
            a = acc[(method, budget)]
            ppl = math.exp(a.nll / a.tokens)
            expected = gated.expected_loss(budget) if method == "dynasparse" else None
            rows.append(Row(method, budget, a.skipped / a.tokens, ppl, ppl / dense_ppl, a.kl / a.tokens,
                            a.agree / a.tokens, expected))
    return dense_ppl, rows


def at_bytes_skipped(rows: list[Row], levels=(0.25, 0.40, 0.50)) -> list[dict]:
    """Each method's quality at fixed fractions of bytes skipped, interpolated between its measured rows
    (linear in bytes skipped; log-linear for KL and perplexity ratio, which grow roughly exponentially),
    so that both methods are compared at the same bytes skipped. Levels outside a method's measured
    range are left out."""
    out = []
    for method in ("dynasparse", "uniform"):
        mine = sorted((r for r in rows if r.method == method), key=lambda r: r.bytes_skipped)
        for level in levels:
            for lo, hi in zip(mine, mine[1:]):
                if lo.bytes_skipped <= level <= hi.bytes_skipped and hi.bytes_skipped > lo.bytes_skipped:
                    w = (level - lo.bytes_skipped) / (hi.bytes_skipped - lo.bytes_skipped)
                    lin = lambda a, b: (1 - w) * a + w * b  # noqa: E731
                    geo = lambda a, b: (math.exp(lin(math.log(a), math.log(b))) if min(a, b) > 0  # noqa: E731
                                        else lin(a, b))  # from dense (KL 0): linear
                    out.append({"method": method, "bytes_skipped": level, "budget": lin(lo.budget, hi.budget),
                                "ppl_ratio": geo(lo.ppl_ratio, hi.ppl_ratio), "kl": geo(lo.kl, hi.kl),
                                "top1": lin(lo.top1, hi.top1)})
                    break
    uniform = {e["bytes_skipped"]: e["kl"] for e in out if e["method"] == "uniform"}
    for entry in out:  # the comparison users ask for: our KL as a multiple of uniform's, same bytes
        if entry["method"] == "dynasparse" and uniform.get(entry["bytes_skipped"], 0) > 0:
            entry["kl_vs_uniform"] = entry["kl"] / uniform[entry["bytes_skipped"]]
    return out
