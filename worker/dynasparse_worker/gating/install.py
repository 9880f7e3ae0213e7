"""Install width/depth gates into a Hugging Face decoder model by replacing its projection submodules.

`install_gates(model)` finds the blocks structurally (models.structure), registers one shared
`SparsityState` on the model (as `model.dynasparse_state`, non-persistent buffers) and swaps every
q/k/v/o/gate/up/down `nn.Linear` for a `GatedLinear` sharing the same Parameters. Returns a
`GatedModel` (the runtime knob). Called by the eval/calibrate commands, the engine and tests.
"""

from __future__ import annotations

from torch import nn

from dynasparse_worker.gating.controller import GatedModel
from dynasparse_worker.gating.gated_linear import GatedLinear
from dynasparse_worker.gating.state import SparsityState
from dynasparse_worker.models.structure import find_structure
from dynasparse_worker.sparsity import CLOSING_GROUP, DEFAULT_BUCKET_EDGES, NUM_GROUPS

# attn_out closes the attention half, mlp_out the MLP half
_HALF_CLOSED_BY = {group: half for half, group in CLOSING_GROUP.items()}


def install_gates(model: nn.Module, bucket_edges=DEFAULT_BUCKET_EDGES) -> GatedModel:
    """Gate `model` in place (idempotent: an already gated model gets its existing GatedModel back)."""
    existing = getattr(model, "dynasparse_gated", None)
    if existing is not None:
        return existing
    structure = find_structure(model)
    widths = [[block.in_features(g) for g in range(NUM_GROUPS)] for block in structure.blocks]
    reference = next(model.parameters())
    state = SparsityState(widths, bucket_edges).to(reference.device)
    model.add_module("dynasparse_state", state)
    for layer, block in enumerate(structure.blocks):
        for group, members in enumerate(block.groups):
            for position, proj in enumerate(members):
                gated = GatedLinear(proj.module, state, layer, group, leader=position == 0,
                                    half=_HALF_CLOSED_BY.get(group))
                setattr(proj.parent, proj.name, gated)
                proj.module = gated
    gated_model = GatedModel(model, structure, state)
    object.__setattr__(model, "dynasparse_gated", gated_model)  # not a submodule: plain back-reference
    return gated_model
