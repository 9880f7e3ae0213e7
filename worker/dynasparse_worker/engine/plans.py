"""Host-side view of the gated model's plan: which captured decode graph serves a step.

The `SparsityState` tensors stay the truth (thresholds are read inside the graphs); this module turns
them, on the host, into a *variant* per plan bucket: `(gated, depth)` where `gated` says whether any
width gate can skip a channel (False: the ungated dense graph, so budget 1.0 costs nothing) and
`depth` is the per-layer `(attention kept, MLP kept)` plan (None: every half runs). A captured graph
also fixes which kernel each projection group runs (its *signature*: "sparse" or "dense" per group,
from the measured crossover at the width sparsity the graph is built for), so `variants_of` lists
the finite set of (variant, signature) pairs a calibrated `PlanTable` can produce, and the runner
captures them all at start-up: a denser budget that shares a depth plan with a sparser one does not
run the sparse kernel below its crossover. Pure functions over small CPU tensors; called by
`ModelRunner`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from dynasparse_worker.sparsity import Depth, HalfBytes, PlanState, width_sparsity

if TYPE_CHECKING:
    from dynasparse_worker.gating.planner import PlanTable

Variant = tuple[bool, Depth | None]  # (width gates on, depth plan or None = all halves run)
DENSE: Variant = (False, None)
Signature = tuple[str, ...]  # per projection group, the kernel a graph runs: "sparse" | "dense"
GraphKey = tuple[Variant, Signature]


@dataclass(frozen=True)
class HostPlan:
    """The active plan, per plan bucket, as host values (refreshed when the state's tensors change)."""

    variants: tuple[Variant, ...]  # [NB]
    width_sparsity: tuple[float, ...]  # [NB] expected fraction of kept-half rows the gates skip
    kv_cap: tuple[int, ...]  # [NB] 0 = unlimited


def depth_of(keep: torch.Tensor) -> Depth | None:
    """[L, 2] keep flags -> the depth plan, or None when every half runs."""
    flags = tuple((bool(a > 0.5), bool(m > 0.5)) for a, m in keep.tolist())
    return None if all(a and m for a, m in flags) else flags


def read_plan(state: PlanState, half_bytes: HalfBytes) -> HostPlan:
    """Copy the state's plan to the host (small device->host reads) and classify it."""
    caps = [int(c) for c in state.kv_cap.detach().cpu().tolist()]
    return host_plan(state.thresholds.detach().cpu(), state.layer_keep.detach().cpu(),
                     float(state.budget.detach().cpu()), caps, half_bytes)


def host_plan(thresholds: torch.Tensor, keep: torch.Tensor, budget: float, kv_cap: list[int],
              half_bytes: HalfBytes) -> HostPlan:
    """Classify a plan given as CPU tensors (thresholds [NB, L, 4], keep flags [NB, L, 2]) per
    plan bucket: without a device read, so a budget change costs no synchronisation."""
    thresholds, keep = thresholds.float(), keep.float()
    variants, widths = [], []
    for nb in range(thresholds.shape[0]):
        depth = depth_of(keep[nb])
        gated = bool((thresholds[nb] > 0).any())
        variants.append((gated, depth))
        widths.append(width_sparsity(budget, depth, half_bytes) if gated else 0.0)
    return HostPlan(tuple(variants), tuple(widths), tuple(int(c) for c in kv_cap))


def variants_of(table: PlanTable | None, nb: int, half_bytes: HalfBytes,
                signature: Callable[[float], Signature] | None = None,
                alternatives: bool = False) -> dict[GraphKey, float]:
    """Every (variant, signature) plan bucket `nb` can take -> the width sparsity its graph is built for.

    Without a table: dense and gated-with-all-halves. With one: each calibrated level's depth plan,
    gated, with the kernels `signature(width)` picks at that level's width sparsity; levels with the
    same pair share a graph, built for the sparsest of them. `alternatives` adds, per gated level,
    the same plan with every group dense and with every group sparse (same result), so the speed
    table (`engine.speed`) can time which is fastest on this device.
    """
    sign = signature or (lambda width: ())
    found: dict[GraphKey, float] = {(DENSE, ()): 0.0}
    if table is None:
        found[(True, None), sign(0.5)] = 0.5
        return found
    found[(True, None), sign(0.0)] = 0.0
    for level, budget in enumerate(table.budgets.tolist()):
        depth = depth_of(table.layer_keep[level, nb])
        width = width_sparsity(float(budget), depth, half_bytes)
        preferred = sign(width)
        for sig in kernel_alternatives(preferred) if alternatives and width > 0 else [preferred]:
            key = ((True, depth), sig)
            found[key] = max(found.get(key, 0.0), width)
    return found


def kernel_alternatives(preferred: Signature) -> list[Signature]:
    """The crossover's kernel choice, then every group dense, then every group sparse."""
    found = [preferred]
    for kind in ("dense", "sparse"):
        uniform = tuple(kind for _ in preferred)
        if preferred and uniform not in found:
            found.append(uniform)
    return found


def fallback(wanted: Variant, signature: Signature, captured: set[GraphKey]) -> GraphKey | None:
    """The captured graph that computes `wanted`'s result, or None: the exact one; else (an ungated
    depth plan) its gated twin, whose thresholds are then all zero; else the same variant with other
    kernels (same result, maybe slower)."""
    candidates = [(wanted, ())] if not wanted[0] else []
    for variant in (wanted, (True, wanted[1])):
        candidates.append((variant, signature))
    for key in candidates:
        if key in captured:
            return key
    for variant in (wanted, (True, wanted[1])):
        others = sorted(sig for v, sig in captured if v == variant)
        if others:
            return variant, others[0]
    return None
