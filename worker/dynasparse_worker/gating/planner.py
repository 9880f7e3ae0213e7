"""Plans and the calibrated plan table: `budget → Plan` for every batch bucket, with expected loss.

A `Plan` is what `GatedModel.apply` copies into the `SparsityState`. A `PlanTable` (built by
`gating.allocation`, stored by `gating.artifact`) holds a monotone path of levels from dense
(budget 1.0) to the calibrated floor; `plan_for(b)` interpolates thresholds between the two levels
around `b` (the knob is continuous) and takes depth decisions from the sparser one, so the budget is
always met. Called by `GatedModel.set_budget`.

`offered` (set by the engine from the speed it measured on its device, `engine.speed`) marks, per
level and bucket, the levels that are faster than every denser one there; with it a budget is
served per bucket by the sparsest offered level at or above it (interpolating only between two
offered neighbours), so a lower budget never runs a slower plan.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dynasparse_worker.sparsity import NUM_GROUPS, NUM_HALVES


@dataclass
class Plan:
    budget: float
    thresholds: torch.Tensor  # [NB, L, 4] float32, keep iff score > threshold
    layer_keep: torch.Tensor  # [NB, L, 2] float32 in {0, 1}
    kv_cap: torch.Tensor  # [NB] int64, 0 = unlimited
    expected_loss: torch.Tensor  # [NB] float32, expected KL(dense‖sparse) per token


def dense_plan(state) -> Plan:
    nb, nl = len(state.bucket_edges), state.num_layers
    return Plan(1.0, torch.zeros(nb, nl, NUM_GROUPS), torch.ones(nb, nl, NUM_HALVES),
                torch.zeros(nb, dtype=torch.int64), torch.zeros(nb))


@dataclass
class PlanTable:
    bucket_edges: tuple[int, ...]
    budgets: torch.Tensor  # [K] float64, strictly decreasing, budgets[0] == 1.0, budgets[-1] == floor
    thresholds: torch.Tensor  # [K, NB, L, 4] float32, non-decreasing along K
    layer_keep: torch.Tensor  # [K, NB, L, 2] float32, non-increasing along K
    expected_loss: torch.Tensor  # [K, NB] float32
    col_scale: list[list[torch.Tensor]]  # [L][4] of [in] float32
    offered: torch.Tensor | None = None  # [K, NB] bool: measured faster than every denser level

    def plan_for(self, budget: float) -> Plan:
        plan = self._interpolated(budget)
        if self.offered is not None:
            self._snap_to_offered(plan, budget)
        return plan

    def _snap_to_offered(self, plan: Plan, budget: float) -> None:
        """Buckets whose two levels around `budget` are not both offered take the sparsest
        offered level at or above it instead (level 0, dense, is always offered)."""
        budgets = self.budgets
        denser = int((budgets >= budget - 1e-12).nonzero().max())
        sparser = min(denser + 1, len(budgets) - 1)
        exact = abs(float(budgets[denser]) - budget) < 1e-12
        for nb in range(len(self.bucket_edges)):
            column = self.offered[:, nb]
            if bool(column[denser]) and (exact or bool(column[sparser])):
                continue
            level = max(k for k in range(denser + 1) if k == 0 or bool(column[k]))
            plan.thresholds[nb] = self.thresholds[level, nb]
            plan.layer_keep[nb] = self.layer_keep[level, nb]
            plan.expected_loss[nb] = self.expected_loss[level, nb]

    def _interpolated(self, budget: float) -> Plan:
        budgets = self.budgets
        denser = int((budgets >= budget - 1e-12).nonzero().max())  # last level with budget >= b
        if denser == len(budgets) - 1 or abs(float(budgets[denser]) - budget) < 1e-12:
            weight, sparser = 0.0, denser
        else:
            sparser = denser + 1
            span = float(budgets[denser] - budgets[sparser])
            weight = float(budgets[denser] - budget) / span
        mix = lambda t: (1 - weight) * t[denser] + weight * t[sparser]  # noqa: E731
        nb = len(self.bucket_edges)
        return Plan(
            budget=float(budget),
            thresholds=mix(self.thresholds),
            layer_keep=self.layer_keep[sparser].clone(),
            kv_cap=torch.zeros(nb, dtype=torch.int64),
            expected_loss=mix(self.expected_loss),
        )
