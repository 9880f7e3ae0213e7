"""`SparseLinearOps`: the engine's projection dispatch point (`ops=` of `engine.Engine`), backed
by the input-sparse kernels of this package.

The engine's `DecoderModel` calls `ops.project(x, weight, bias, layer, group, bucket)` for every
projection group, with `weight` in `nn.Linear` layout (`[out, in]`, q|k|v and gate|up already fused
by the engine) and `layer`, `group`, `bucket` fixed per captured graph. This class has the same
interface as `engine.model.LinearOps` (it satisfies `engine.model.ProjectionOps` structurally, so the
kernels never import the engine):

* sparse calls pack the weight input-major once, on their first call (the engine's warm-up, before
  graph capture), and keep that copy; dense calls mask x (one fused launch on CUDA) and run
  `F.linear` on the engine's own weight, so groups that never go sparse cost no extra memory
  (and a bf16 CPU copy never slows the dense path: bf16 GEMV is slow on AVX2 CPUs);
* it reads the threshold as a view `state.thresholds[bucket, layer, group]` and the column scale
  from the same `SparsityState`, so `set_budget` needs no re-capture;
* `policy(rows, group)` picks "sparse" or "dense" per call shape; it runs at capture time, so it
  may not read device tensors. The default sends a call to the sparse kernel where the measured
  crossover (`configs.choose`) says it wins at `expected_sparsity`; dense calls mask x the same
  way, so both give the contract's result.

Gate/up goes through `project_gated`: on CUDA its sparse calls pack `[gate, up]` as a gated group,
so the kernel applies SiLU·up in its epilogue (`[N, I]` out) and runs the config tuned for that
shape (as an un-gated `[N, 2I]` projection it fell back to an untuned config: 59.9 us per layer at
50 % inside the engine against 43.4 us tuned). Other activations, the CPU and dense calls take the
plain path and the engine's own SiLU·up.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from dynasparse_worker.kernels import sparse_matmul
from dynasparse_worker.kernels.configs import KernelConfig, choose, listed_config
from dynasparse_worker.kernels.layout import PackedWeight, SplitKWorkspace, pack_projection
from dynasparse_worker.sparsity import GROUP_NAMES, MLP_IN, PlanState, keep_mask


class SparseLinearOps:
    """Projection dispatch over input-major packed weights: Triton on CUDA, embedding_bag on CPU."""

    def __init__(self, state: PlanState | None = None, expected_sparsity: float = 0.5,
                 policy: Callable[[int, str], str] | None = None,
                 cpu_dtype: torch.dtype | None = None, max_batch: int = 64,
                 device_type: str = "cpu", kernel: str = "compact"):
        self.state = state
        self.expected_sparsity = expected_sparsity
        # CUDA sparse kernel: "compact" (per-program row lists) or "listed" (one list per input
        # vector, built in the norm where it can be; measured slower on the H200 so far)
        self.kernel = kernel
        self.policy = policy or self._default_policy
        # per group "sparse" | "dense", fixed by the runner for a graph whose kernels were chosen
        # by measured speed (engine.speed); None: `policy` decides
        self.forced: tuple[str, ...] | None = None
        # (layer, group) whose input's kept-channel list the producing norm is writing (set by
        # `input_gate`, consumed by the next projection of that group)
        self._prelisted: tuple[int, int] | None = None
        self.cpu_dtype = cpu_dtype  # e.g. torch.bfloat16: half the bytes per step on the CPU
        self.max_batch = max_batch
        self._packed: dict[tuple[int, int], PackedWeight] = {}
        # (bucket, layer, group) -> (threshold view, column scale), built on first use: the
        # views follow in-place writes, and looking them up again costs 4 small ops per call
        self._gates: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._gates_of: torch.Tensor | None = None  # the thresholds tensor the views point into
        self._workspace: SplitKWorkspace | None = None
        # whose crossover table `choose` reads; known before the first call, so a caller can ask
        # which kernels a width will run (the runner keys its CUDA graphs on that), then kept
        # in step with the inputs
        self.device_type = device_type

    def _default_policy(self, rows: int, group: str) -> str:
        return choose(rows, self.expected_sparsity, self.device_type, group)

    def _mode(self, rows: int, group: int) -> str:
        """"sparse" or "dense" for this call: the forced choice, else the policy's."""
        if rows > self.max_batch:
            return "dense"
        if self.forced:
            return self.forced[group]
        return self.policy(rows, GROUP_NAMES[group])

    def _pack(self, weight: torch.Tensor, layer: int, group: int,
              gated: bool = False) -> PackedWeight:
        key = (layer, group)
        pw = self._packed.get(key)
        if pw is None or pw.w_t.shape != (weight.shape[1], weight.shape[0]) or pw.gated != gated:
            cuda = weight.device.type == "cuda"
            if cuda and self._workspace is None:
                self._workspace = SplitKWorkspace.allocate(
                    weight.device, max_batch=self.max_batch, max_out=max(weight.shape[0], 65536),
                    max_split=8, max_in=65536)  # 134 MB of partials; the kernels clamp split-K
            dtype = None if cuda else self.cpu_dtype
            parts = list(weight.chunk(2, dim=0)) if gated else [weight]  # gated: [gate, up]
            pw = pack_projection(parts, gated=gated, workspace=self._workspace if cuda else None,
                                 dtype=dtype)
            self._packed[key] = pw
        return pw

    def gate(self, bucket: int, layer: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The threshold view `thresholds[bucket, layer, group]` `[]` and the column scale `[in]`
        that (bucket, layer, group)'s projection reads, cached."""
        if self._gates_of is not self.state.thresholds:  # a new tensor, not an in-place write
            self._gates.clear()
            self._gates_of = self.state.thresholds
        key = (bucket, layer, group)
        gate = self._gates.get(key)
        if gate is None:
            gate = (self.state.thresholds[bucket, layer, group], self.state.col_scale(layer, group))
            self._gates[key] = gate
        return gate

    def project(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                layer: int, group: int, bucket: int) -> torch.Tensor:
        """`x [N, in]` -> `[N, out]` under the gating contract of (bucket, layer, group)."""
        self.device_type = x.device.type
        if self.state is None:  # no gates: plain dense projection
            y = x @ weight.t()  # [N, out]
            return y if bias is None else y + bias
        threshold, scale = self.gate(bucket, layer, group)  # [] float32 view, [in]
        rows = x.shape[0]
        mode = self._mode(rows, group)
        prelisted = self._take_prelisted(layer, group)
        if mode == "dense":
            return F.linear(_masked(x, threshold, scale), weight, bias)  # [N, out]
        pw = self._pack(weight, layer, group)
        y = sparse_matmul(x.contiguous(), pw, threshold, scale, prelisted=prelisted,
                          config=self._config(rows, pw))  # [N, out]
        return y if bias is None else y + bias

    def project_gated(self, x: torch.Tensor, gate_up: torch.Tensor,
                      act: Callable[[torch.Tensor], torch.Tensor], layer: int,
                      bucket: int) -> torch.Tensor | None:
        """The MLP input group `act(x Wg) * (x Wu)` `[N, I]` from the fused `[2I, hidden]` weight
        through the sparse kernel with SiLU·up in its epilogue (CUDA), or None where that does not
        apply (CPU, another activation, a dense call): the engine then calls `project` and applies
        its own SiLU·up kernel."""
        group = MLP_IN
        self.device_type = x.device.type
        rows = x.shape[0]
        if (self.state is None or x.device.type != "cuda" or not _is_silu(act)
                or self._mode(rows, group) != "sparse"):
            return None
        threshold, scale = self.gate(bucket, layer, group)
        pw = self._pack(gate_up, layer, group, gated=True)
        return sparse_matmul(x.contiguous(), pw, threshold, scale,
                             prelisted=self._take_prelisted(layer, group),
                             config=self._config(rows, pw))  # [N, I]

    def input_gate(self, layer: int, group: int, bucket: int, rows: int, device: torch.device
                   ) -> tuple | None:
        """(threshold, column scale, list, count) for the norm that produces this group's input
        to write the kept-channel list in its epilogue (`engine.fused.add_rms_norm`), or None
        where the listed kernel will not consume it (CPU, a batch, a dense call, before the
        workspace exists). The next `project` of (layer, group) then skips its own listing."""
        ws = self._workspace
        if (self.state is None or device.type != "cuda" or rows != 1 or ws is None
                or self.kernel != "listed"
                or ws.rows is None or self._mode(rows, group) != "sparse"):
            self._prelisted = None
            return None
        threshold, scale = self.gate(bucket, layer, group)
        self._prelisted = (layer, group)
        return threshold, scale, ws.rows, ws.row_counts[:1]

    def _config(self, rows: int, pw: PackedWeight) -> KernelConfig | None:
        """The listed kernel's launch config when it is the chosen kernel (CUDA), else None."""
        if self.kernel != "listed" or pw.workspace is None:
            return None
        return listed_config(rows, pw.out_features, pw.gated)

    def _take_prelisted(self, layer: int, group: int) -> bool:
        hit = self._prelisted == (layer, group)
        self._prelisted = None
        return hit


def _is_silu(act: Callable[[torch.Tensor], torch.Tensor]) -> bool:
    return act is F.silu or type(act).__name__ in ("SiLU", "SiLUActivation")


def _masked(x: torch.Tensor, threshold: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """x with the channels under the gate zeroed: one Triton launch on CUDA. `[N, in]`."""
    if x.device.type == "cuda":
        from dynasparse_worker.kernels.triton_mask import mask_input_triton

        return mask_input_triton(x.contiguous(), threshold, scale)
    return torch.where(keep_mask(x, threshold, scale), x, torch.zeros_like(x))
