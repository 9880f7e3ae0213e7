"""`GatedModel`: the runtime knob around a gated HF model — `set_budget(b)` copies a plan in place.

Holds the model, its structure, the shared `SparsityState` and (after calibration) a `PlanTable`.
`set_budget` computes the plan for every batch bucket on the CPU and `copy_`s it into the state's
device buffers: no allocation on the device, no re-trace. Used by the engine, the server's control
path, `dynasparse eval` and the tests.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch

from dynasparse_worker.errors import UserError
from dynasparse_worker.sparsity import NUM_GROUPS, HalfBytes, groups_to_halves, half_bytes_of

if TYPE_CHECKING:
    from dynasparse_worker.gating.planner import Plan, PlanTable


class GatedModel:
    def __init__(self, model, structure, state):
        self.model = model
        self.structure = structure
        self.state = state
        self.table: PlanTable | None = None
        elements = structure.group_elements()  # [L][4]
        self.group_elements = torch.tensor(elements, dtype=torch.float64)  # [L, 4]
        self.total_elements = float(self.group_elements.sum())
        # [L, 2] elements a skipped (attention, MLP) half does not read: K/V projections still run
        self.skip_elements = torch.tensor(structure.skip_elements(), dtype=torch.float64)

    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    # ----- calibration ---------------------------------------------------------------------------
    def attach(self, table: PlanTable) -> None:
        """Use a calibrated plan table (and its column scales); starts dense."""
        self.table = table
        with torch.no_grad():
            for layer in range(self.structure.num_layers):
                for group in range(NUM_GROUPS):
                    self.state.col_scale(layer, group).copy_(table.col_scale[layer][group])
        self.set_budget(1.0)

    @property
    def floor(self) -> float:
        """The sparsest calibrated budget (1.0 before calibration)."""
        return float(self.table.budgets[-1]) if self.table is not None else 1.0

    # ----- the knob ------------------------------------------------------------------------------
    def check_budget(self, budget: float) -> float:
        budget = float(budget)
        if not 0.0 < budget <= 1.0:
            raise UserError(f"budget {budget:g} is outside (0, 1]: pass a fraction such as 0.6")
        if budget < self.floor - 1e-9:
            raise UserError(
                f"budget {budget:g} is below the calibrated floor {self.floor:.2f}: pass a budget >= "
                f"{self.floor:.2f} (or recalibrate with a lower --floor)"
            )
        return budget

    def set_budget(self, budget: float, kv_cap: int | None = None) -> Plan:
        """Move every bucket to the plan of `budget` (in place) and return that plan."""
        budget = self.check_budget(budget)
        if self.table is None:
            if budget < 1.0:
                raise UserError("the model is not calibrated: run `dynasparse calibrate` first")
            from dynasparse_worker.gating.planner import dense_plan

            plan = dense_plan(self.state)
        else:
            plan = self.table.plan_for(budget)
        if kv_cap is not None:
            plan.kv_cap.fill_(int(kv_cap))
        self.apply(plan)
        return plan

    @torch.no_grad()
    def apply(self, plan: Plan) -> None:
        """Copy any plan (e.g. a baseline) into the state's buffers, then refresh the active bucket."""
        state = self.state
        state.thresholds.copy_(plan.thresholds)
        state.layer_keep.copy_(plan.layer_keep)
        state.kv_cap.copy_(plan.kv_cap)
        state.budget.fill_(plan.budget)
        state.expected_loss.copy_(plan.expected_loss[state.active_bucket])
        state.select_bucket(state.active_bucket)

    def set_batch_size(self, batch_size: int) -> None:
        """Make the HF path follow the plan of the bucket that serves `batch_size` sequences."""
        self.state.select_bucket(self.state.bucket_index(batch_size))

    @torch.no_grad()
    def set_col_scale(self, scales) -> None:
        """Overwrite the column scales ([L][4] of [in] tensors, or 1.0 for the plain |x| score)."""
        for layer in range(self.structure.num_layers):
            for group in range(4):
                target = self.state.col_scale(layer, group)
                if isinstance(scales, (int, float)):
                    target.fill_(float(scales))
                else:
                    target.copy_(scales[layer][group])

    def expected_loss(self, budget: float, batch_size: int = 1) -> float:
        """Calibrated expected KL(dense‖sparse) per token at `budget` (0 for dense)."""
        if self.table is None or budget >= 1.0:
            return 0.0
        bucket = self.state.bucket_index(batch_size)
        return float(self.table.plan_for(self.check_budget(budget)).expected_loss[bucket])

    def half_bytes(self) -> HalfBytes:
        """Weight bytes each layer's (attention, MLP) half saves when skipped (a skipped attention
        half still reads its key/value rows), from the model's structure."""
        element = self.structure.blocks[0].groups[0][0].module.weight.element_size()
        return half_bytes_of(self.structure.skip_elements(), element)

    # ----- measurement ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def counting(self):
        """Count skipped channels during the block (eval only; never inside compiled graphs)."""
        leaders = [block.groups[g][0].module for block in self.structure.blocks for g in range(4)]
        self.state.reset_counters()
        for module in leaders:
            module.track = True
        try:
            yield self
        finally:
            for module in leaders:
                module.track = False

    def bytes_skipped(self) -> float:
        """Measured fraction of decode weight bytes not read, averaged over counted tokens."""
        tokens = float(self.state.tokens_seen)
        if tokens == 0:
            return 0.0
        per_channel = self.group_elements / torch.tensor(
            [[b.in_features(g) for g in range(NUM_GROUPS)] for b in self.structure.blocks],
            dtype=torch.float64
        )  # [L, 4] elements per skipped channel
        width = self.state.skipped_channels.cpu() / tokens * per_channel  # [L, 4]
        width_halves = groups_to_halves(width)  # [L, 2]
        keep = self.state.active_layer_keep.cpu().double()  # [L, 2]
        skipped = width_halves * keep + self.skip_elements * (1 - keep)  # [L, 2]
        return float(skipped.sum()) / self.total_elements
