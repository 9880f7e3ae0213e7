"""Calibration: activation and gradient statistics on calibration text → a `PlanTable` + uniform baseline.

One pass over the calibration sequences with hooks on every group's leading projection collects
(a) a sample of |x| rows per (layer, group), (b) the mean squared gradient of a sampled
log-likelihood at each group input (diagonal Fisher: the default channel score's scale) and at each
block's output (which weighs the measured output errors). By default (`allocation="measured"`) every
block then replays its captured inputs to choose its sparsity path by measured output error, and one
price per level spreads the bytes across blocks (`gating.measured`); `allocation="price"` keeps the
second-order price over all groups (`gating.allocation`). A few forward passes on held-out
calibration sequences then measure the real KL at some levels, which rescales the estimates into the
expected loss the planner reports. Called by `calibration_for` (eval/calibrate commands, the server)
and tests.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dynasparse_worker.gating.allocation import Allocation, summarise, uniform_thresholds
from dynasparse_worker.gating.measured import (BlockProbe, build_levels, capture_blocks, greedy_path, half_costs,
                                               level_thresholds)
from dynasparse_worker.gating.planner import PlanTable
from dynasparse_worker.gating.state import DEFAULT_BUCKET_EDGES

UNIFORM_SPARSITIES = [i / 20 for i in range(20)]  # 0.00 .. 0.95, the baseline's grid


@dataclass(frozen=True)
class CalibrationSettings:
    sequences: int = 8  # calibration sequences for the statistics
    seq_len: int = 256
    batch_size: int = 2
    samples_per_batch: int = 128  # token rows of |x| kept per batch for the score distributions
    validation_sequences: int = 2  # held-out calibration sequences for measuring KL at some levels
    floor: float = 0.3  # sparsest budget offered
    step: float = 0.02  # budget spacing of the levels
    seed: int = 0
    bucket_edges: tuple[int, ...] = DEFAULT_BUCKET_EDGES
    # "measured": per-block greedy paths by measured output error (gating.measured); "price": one
    # second-order price over all (layer, group) (gating.allocation)
    allocation: str = "measured"
    score: str = "fisher"  # channel score |x|·s: s = Fisher scale | 1 ("abs") | ‖W column‖ ("wina")
    steps: int = 10  # skipped-fraction steps per group on the measured paths (1/steps each)
    probe_tokens: int = 128  # tokens of the first calibration sequence the measured paths replay
    version: int = 3  # bump when the algorithm changes: invalidates cached artifacts (3: BOS, measured)

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]

    def budgets(self) -> list[float]:
        count = int(round((1.0 - self.floor) / self.step))
        return [round(1.0 - i * self.step, 6) for i in range(count + 1)]


@dataclass
class Calibration:
    """A calibrated table plus what eval needs for the uniform baseline."""

    table: PlanTable
    uniform: torch.Tensor  # [Q, L, 4] |x| thresholds skipping UNIFORM_SPARSITIES[q] in every group
    settings: CalibrationSettings
    fingerprint: str
    model_name: str
    measured: dict = field(default_factory=dict)  # {"budgets": [...], "kl": [...]} on held-out calib text


def _kl_per_token(dense_logits: torch.Tensor, sparse_logits: torch.Tensor) -> torch.Tensor:
    """KL(dense‖sparse) per position. [B, T, V] x2 → [B, T]"""
    p_log = dense_logits.float().log_softmax(-1)
    q_log = sparse_logits.float().log_softmax(-1)
    return (p_log.exp() * (p_log - q_log)).sum(-1)


class _Collector:
    """Forward/backward hooks filling the statistics for one calibration run."""

    def __init__(self, gated, samples_per_batch: int, generator: torch.Generator):
        self.gated, self.samples_per_batch, self.generator = gated, samples_per_batch, generator
        blocks = gated.structure.blocks
        self.samples = [[[] for _ in range(4)] for _ in blocks]
        self.grad_sq = [[torch.zeros(b.in_features(g), dtype=torch.float64) for g in range(4)] for b in blocks]
        self.half_cost = torch.zeros(len(blocks), 2, dtype=torch.float64)
        self.out_fisher = [torch.zeros(gated.structure.hidden, dtype=torch.float64) for _ in blocks]
        self.tokens = 0
        self.rows: torch.Tensor | None = None
        self.handles = []
        for layer, block in enumerate(blocks):
            for group in range(4):
                leader = block.groups[group][0].module
                self.handles.append(leader.register_forward_pre_hook(self._input_hook(layer, group)))
            self.handles.append(gated.structure.layers[layer].register_forward_hook(self._block_hook(layer)))
            for half, group in ((0, 1), (1, 3)):
                closer = block.groups[group][0].module
                self.handles.append(closer.register_forward_hook(self._output_hook(layer, half)))

    def start_batch(self, tokens: int) -> None:
        self.tokens += tokens
        count = min(self.samples_per_batch, tokens)
        self.rows = torch.randperm(tokens, generator=self.generator)[:count]

    def _input_hook(self, layer, group):
        def hook(module, args):
            x = args[0]  # [B, T, in]
            flat = x.detach().reshape(-1, x.shape[-1])  # [B*T, in]
            self.samples[layer][group].append(flat[self.rows.to(flat.device)].abs().half().cpu())
            if x.requires_grad:
                def grad_hook(grad):
                    self.grad_sq[layer][group] += grad.detach().double().pow(2).reshape(-1, grad.shape[-1]).sum(0).cpu()
                x.register_hook(grad_hook)
        return hook

    def _output_hook(self, layer, half):
        def hook(module, args, out):
            if out.requires_grad:
                y = out.detach()  # [B, T, H]

                def grad_hook(grad):
                    self.half_cost[layer, half] += float((grad.double() * y.double()).sum(-1).pow(2).sum())
                out.register_hook(grad_hook)
        return hook

    def _block_hook(self, layer):
        def hook(module, args, out):
            hidden = out[0] if isinstance(out, (tuple, list)) else out  # [B, T, H]
            if hidden.requires_grad:
                def grad_hook(grad):
                    self.out_fisher[layer] += grad.detach().double().pow(2).reshape(-1, grad.shape[-1]).sum(0).cpu()
                hidden.register_hook(grad_hook)
        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def collect_statistics(gated, ids: torch.Tensor, settings: CalibrationSettings, progress: bool = True):
    """Run the model on `ids` [N, T] with sampled-label backward passes. → (_Collector, generator)."""
    model = gated.model
    generator = torch.Generator().manual_seed(settings.seed)
    device = next(model.parameters()).device
    gated.set_budget(1.0)
    collector = _Collector(gated, settings.samples_per_batch, generator)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for param, _ in flags:
        param.requires_grad_(False)
    embed = model.get_input_embeddings()
    try:
        batches = ids.split(settings.batch_size)
        for batch in tqdm(batches, desc="calibrating (activation statistics)", disable=not progress):
            batch = batch.to(device)  # [B, T]
            collector.start_batch(batch.numel())
            embeds = embed(batch).detach().requires_grad_(True)  # [B, T, H]
            logits = model(inputs_embeds=embeds, use_cache=False).logits.float()  # [B, T, V]
            with torch.no_grad():
                probs = logits.softmax(-1).reshape(-1, logits.shape[-1])  # [B*T, V]
                labels = torch.multinomial(probs, 1, generator=None).squeeze(1)  # [B*T]
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels, reduction="sum")
            loss.backward()
    finally:
        collector.close()
        for param, flag in flags:
            param.requires_grad_(flag)
    return collector, generator


def calibrate(gated, calib_ids: torch.Tensor, valid_ids: torch.Tensor, settings: CalibrationSettings,
              fingerprint: str, model_name: str, progress: bool = True) -> Calibration:
    """Statistics → allocation → measured KL at some levels → a `Calibration` attached to `gated`."""
    torch.manual_seed(settings.seed)
    stats, generator = collect_statistics(gated, calib_ids, settings, progress)
    nl = gated.structure.num_layers
    abs_samples = [torch.cat(stats.samples[l][g]) for l in range(nl) for g in range(4)]  # G x [S, in]
    col_scale = [[(stats.grad_sq[l][g] / stats.tokens).sqrt().float().clamp(min=1e-12) for g in range(4)]
                 for l in range(nl)]
    col_scale = _score_scales(gated, settings.score, col_scale)
    scores = [abs_samples[i].float() * col_scale[i // 4][i % 4] for i in range(len(abs_samples))]
    dist = summarise(scores, settings.bucket_edges, generator)
    budgets = settings.budgets()
    if settings.allocation == "measured":
        gated.set_col_scale(col_scale)
        thresholds, keep, estimate = _measured_levels(gated, stats, calib_ids, scores, dist, settings, progress)
    else:
        allocation = Allocation(gated.group_elements.float(), (0.5 * stats.half_cost / stats.tokens).float(),
                                settings.bucket_edges, gated.skip_elements.float())
        thresholds, keep, estimate = allocation.build(dist, budgets)
    table = PlanTable(tuple(settings.bucket_edges), torch.tensor(budgets, dtype=torch.float64),
                      thresholds, keep, estimate, col_scale)
    uniform = uniform_thresholds(abs_samples, UNIFORM_SPARSITIES).view(len(UNIFORM_SPARSITIES), nl, 4)
    calibration = Calibration(table, uniform, settings, fingerprint, model_name)
    gated.attach(table)
    calibration.measured = measure_levels(gated, valid_ids, settings, progress)
    rescale_expected_loss(table, calibration.measured)
    gated.set_budget(1.0)
    return calibration


def _score_scales(gated, score: str, fisher: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
    """Per-channel score multipliers [L][4] of [in] for the chosen score."""
    if score == "fisher":
        return fisher
    if score == "abs":
        return [[torch.ones_like(s) for s in row] for row in fisher]
    if score == "wina":  # ‖column j‖₂ over every member of the group: the output change per unit x_j
        return [[torch.stack([p.module.weight.detach().float().pow(2).sum(0) for p in block.groups[g]]).sum(0)
                 .sqrt().cpu() for g in range(4)] for block in gated.structure.blocks]
    raise ValueError(f"unknown score {score!r}: use fisher, abs or wina")


def _measured_levels(gated, stats, calib_ids, scores, dist, settings: CalibrationSettings, progress: bool):
    """Greedy per-block paths by measured output error, then levels (see gating.measured)."""
    nl = gated.structure.num_layers
    captured = capture_blocks(gated, calib_ids[:1, : settings.probe_tokens])
    grid = level_thresholds(scores, settings.steps).view(nl, 4, settings.steps)  # [L, 4, steps]
    paths_t, paths_c, halves = [], [], []
    for layer in tqdm(range(nl), desc="calibrating (measured paths)", disable=not progress):
        probe = BlockProbe(gated, layer, captured[layer], stats.out_fisher[layer] / stats.tokens)
        path_t, path_c = greedy_path(probe, grid[layer], gated.group_elements[layer])
        paths_t.append(path_t)
        paths_c.append(path_c)
        halves.append(half_costs(probe))
        captured[layer] = None  # free the block's inputs
    depth = Allocation(gated.group_elements.float(), torch.stack(halves).float(), settings.bucket_edges,
                       gated.skip_elements.float())
    return build_levels(torch.stack(paths_t), torch.stack(paths_c), dist, depth, settings.budgets())


@torch.no_grad()
def measure_levels(gated, ids: torch.Tensor, settings: CalibrationSettings, progress: bool = True) -> dict:
    """Measured KL(dense‖sparse) per token at every 10th level (bucket 1), on held-out calibration text."""
    budgets = settings.budgets()
    chosen = [b for i, b in enumerate(budgets) if i % 10 == 0 and b < 1.0] or budgets[-1:]
    if budgets[-1] not in chosen:
        chosen.append(budgets[-1])
    device = next(gated.model.parameters()).device
    ids = ids.to(device)
    gated.set_budget(1.0)
    dense = gated.model(ids, use_cache=False).logits  # [N, T, V]
    kls = []
    for budget in tqdm(chosen, desc="calibrating (measuring levels)", disable=not progress):
        gated.set_budget(budget)
        sparse = gated.model(ids, use_cache=False).logits  # [N, T, V]
        kls.append(float(_kl_per_token(dense, sparse).mean()))
    gated.set_budget(1.0)
    return {"budgets": chosen, "kl": kls}


def rescale_expected_loss(table: PlanTable, measured: dict) -> None:
    """Map second-order estimates to measured KL with a ratio interpolated in the estimate (bucket 1)."""
    budgets = table.budgets.tolist()
    points = sorted((float(table.expected_loss[budgets.index(b), 0]), kl)
                    for b, kl in zip(measured["budgets"], measured["kl"]) if b in budgets)
    points = [(e, kl) for e, kl in points if e > 0]
    if not points:
        return
    est = torch.tensor([e for e, _ in points], dtype=torch.float64)
    ratio = torch.tensor([kl / e for e, kl in points], dtype=torch.float64)
    flat = table.expected_loss.double().reshape(-1)  # [K*NB]
    idx = torch.searchsorted(est, flat).clamp(1, max(1, len(points) - 1))
    if len(points) == 1:
        factor = ratio.expand_as(flat)
    else:
        lo_e, hi_e = est[idx - 1], est[idx]
        w = ((flat - lo_e) / (hi_e - lo_e)).clamp(0, 1)
        factor = ratio[idx - 1] * (1 - w) + ratio[idx] * w
    table.expected_loss.copy_((flat * factor).view_as(table.expected_loss).float())
    for k in range(1, table.expected_loss.shape[0]):
        table.expected_loss[k] = torch.maximum(table.expected_loss[k], table.expected_loss[k - 1])
