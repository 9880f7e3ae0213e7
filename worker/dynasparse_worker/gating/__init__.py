"""The gated model: width/depth gates driven by a budget, calibration, allocation, planner, artifact.

Public API: `install_gates(model) -> GatedModel`; `GatedModel.set_budget(b)`; `SparsityState` (the
device buffers the engine reads); `calibration_for(loaded, gated)` (load or compute and cache).
"""

from dynasparse_worker.gating.controller import GatedModel
from dynasparse_worker.gating.install import install_gates
from dynasparse_worker.gating.state import SparsityState
from dynasparse_worker.sparsity import DEFAULT_BUCKET_EDGES

__all__ = ["DEFAULT_BUCKET_EDGES", "GatedModel", "SparsityState", "install_gates"]
