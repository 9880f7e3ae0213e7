"""The decoder forward the engine runs, gpt-fast style, reading its weights from a Hugging Face model.

Llama-family blocks (Llama, Mistral, Qwen2 with q/k/v bias, Qwen3 with q/k norm, SmolLM): fused qkv
and gate_up weights, RMSNorm, RoPE tables built from the HF model's own rotary module (so Llama-3
scaling and other rope types come for free), GQA. Attention itself is a callback supplied by the
`ModelRunner` (prefill: SDPA over the cached prefix; decode: `attention.decode_attention`).

Gemma 2 / Gemma 3 text models share the weights layout and differ in numerics, all read from the HF
model: embeddings times sqrt(hidden) rounded to the model dtype; "sandwich" blocks with four
(1 + weight) RMSNorms computed in float32 (input, post-attention, pre- and post-feedforward);
GELU(tanh) gated MLP (the HF module's own `act_fn`); softmax scale query_pre_attn_scalar^-0.5 and
head_dim independent of hidden/heads; per-layer sliding windows (`windows`, Gemma 2 alternating,
Gemma 3 by `layer_types`) that the runner's attention honours; Gemma 3's local layers use their own
RoPE table (rope_local_base_freq) and q/k norms; Gemma 2's attention-logit and final-logit tanh
soft-capping (`ModelShape.attn_softcap`, `final_softcap`).

The gated model's plan runs here: every projection goes through `LinearOps.project(x, ..., layer,
group, bucket)`, the dispatch point where the width gates are applied (dense path: mask inputs whose
score does not pass the threshold read from the `SparsityState` tensors) and where the sparse kernels
of `dynasparse_worker.kernels` plug in (thresholds are device tensors, so a threshold change needs
no re-capture). Depth is a host-side plan (`Depth`): a skipped MLP half is not run at all, a skipped
attention half only computes its keys and values for the cache; the runner captures one graph per
(depth plan, kernel choice) the planner offers and picks one per step.

Built by `ModelRunner`; nothing else calls it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from dynasparse_worker.engine.fused import (add_rms_norm, offset_rms_norm_torch, rms_norm_torch,
                                            rope_and_cache, silu_mul)
from dynasparse_worker.sparsity import (ATTN_IN, ATTN_OUT, MLP_IN, MLP_OUT, Depth, HalfBytes,
                                        PlanState, keep_mask, tensor_bytes)

# attend(layer, q [N, H, D]) -> [N, H, D], over the cache that `forward` has just written
AttendFn = Callable[[int, Tensor], Tensor]


@dataclass(frozen=True)
class ModelShape:
    num_layers: int
    hidden: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    eps: float
    scale: float  # attention softmax scale
    attn_softcap: float | None = None  # Gemma 2: scores -> cap * tanh(scores / cap)
    final_softcap: float | None = None  # Gemma 2: logits -> cap * tanh(logits / cap)


@dataclass
class LayerWeights:
    attn_norm: Tensor  # [hidden]
    qkv: Tensor  # [(H + 2 Hkv) D, hidden]
    qkv_bias: Tensor | None  # [(H + 2 Hkv) D]
    q_norm: Tensor | None  # [D] (Qwen3)
    k_norm: Tensor | None  # [D]
    o: Tensor  # [hidden, H D]
    mlp_norm: Tensor  # [hidden]
    gate_up: Tensor  # [2 I, hidden]
    down: Tensor  # [hidden, I]
    act: Callable[[Tensor], Tensor]
    post_attn_norm: Tensor | None = None  # [hidden] float32 1 + w (Gemma's sandwich norms)
    post_mlp_norm: Tensor | None = None  # [hidden] float32 1 + w
    rope: int = 0  # index into DecoderModel.rope_tables (Gemma 3: local layers have their own)


class ProjectionOps(Protocol):
    """The projection dispatch the forward calls (`LinearOps`, `kernels.SparseLinearOps`).

    `layer`, `group` and `bucket` are Python ints fixed per captured graph; the thresholds are
    read from the state's device tensors. The runner sets `expected_sparsity` (the width the graph
    is built for) and `forced` (a kernel per group it measured fastest, or None) before a forward,
    and asks `policy(rows, group name)` which kernel a call shape runs (None: no choice to make).
    """

    expected_sparsity: float
    forced: tuple[str, ...] | None
    policy: Callable[[int, str], str] | None

    def project(self, x: Tensor, weight: Tensor, bias: Tensor | None, layer: int, group: int,
                bucket: int) -> Tensor: ...

    def project_gated(self, x: Tensor, gate_up: Tensor, act: Callable[[Tensor], Tensor],
                      layer: int, bucket: int) -> Tensor | None: ...

    def input_gate(self, layer: int, group: int, bucket: int, rows: int, device: torch.device
                   ) -> tuple | None: ...


class LinearOps:
    """Default projection dispatch (`ProjectionOps`): dense gates (if a sparsity state is set),
    then `F.linear`. One way to run every call, so no kernel choice and no kept-channel lists."""

    def __init__(self, state: PlanState | None = None):
        self.state = state
        self.expected_sparsity = 0.0
        self.forced: tuple[str, ...] | None = None
        self.policy: Callable[[int, str], str] | None = None

    def project(self, x: Tensor, weight: Tensor, bias: Tensor | None, layer: int, group: int,
                bucket: int) -> Tensor:
        if self.state is not None:
            threshold = self.state.thresholds[bucket, layer, group]  # [] float32
            keep = keep_mask(x, threshold, self.state.col_scale(layer, group))  # [N, in] bool
            x = x * keep.to(x.dtype)  # [N, in]
        return F.linear(x, weight, bias)

    def project_gated(self, x: Tensor, gate_up: Tensor, act: Callable[[Tensor], Tensor], layer: int,
                      bucket: int) -> Tensor:
        """The MLP input group: act(x Wg) * (x Wu) [N, I] from the fused [2I, hidden] weight.

        Override to run a kernel that fuses the activation (e.g. `pack_projection(gated=True)`);
        an override may return None for calls it leaves to `project` plus the SiLU·up kernel.
        """
        return silu_mul(self.project(x, gate_up, None, layer, MLP_IN, bucket), act)  # [N, I]

    def input_gate(self, layer: int, group: int, bucket: int, rows: int, device: torch.device
                   ) -> tuple | None:
        """No kept-channel list: `project` masks its own input."""
        return None


def _project_gated(ops: ProjectionOps, h: Tensor, w: LayerWeights, layer: int,
                   bucket: int) -> Tensor:
    """act(h Wg) * (h Wu) [N, I] through `ops.project_gated` where it takes the call (it returns
    None otherwise: then `project` plus the SiLU·up kernel)."""
    out = ops.project_gated(h, w.gate_up, w.act, layer, bucket)
    if out is not None:  # None: the ops have no fused kernel for this call
        return out
    return silu_mul(ops.project(h, w.gate_up, None, layer, MLP_IN, bucket), w.act)  # [N, I]


def _input_gate(ops: ProjectionOps, layer: int, group: int, bucket: int, x: Tensor) -> tuple | None:
    """What the norm producing (layer, group)'s input needs to also write the group's kept-channel
    list (`ops.input_gate`, where the ops have a listed sparse kernel that reads it), or None."""
    return ops.input_gate(layer, group, bucket, x.shape[0], x.device)


def _linear_of(module: Any) -> torch.nn.Module:
    """The nn.Linear inside `module` (itself, or the one a gating wrapper holds)."""
    if isinstance(getattr(module, "weight", None), torch.Tensor):
        return module
    for child in module.modules():
        if isinstance(child, torch.nn.Linear):
            return child
    raise TypeError(f"no linear weight found in {type(module).__name__}")


def _fuse(modules: list[Any], share: bool) -> tuple[Tensor, Tensor | None]:
    """Concatenate output rows; with `share`, point the HF weights at views of the fused copy."""
    linears = [_linear_of(m) for m in modules]
    weight = torch.cat([lin.weight.detach() for lin in linears], dim=0)  # [sum out, in]
    biases = [lin.bias for lin in linears]
    bias = torch.cat([b.detach() for b in biases]) if all(b is not None for b in biases) else None
    if share:
        row = 0
        for lin in linears:
            n = lin.weight.shape[0]
            lin.weight.data = weight[row:row + n]
            if bias is not None:
                lin.bias.data = bias[row:row + n]
            row += n
    return weight, bias


SANDWICH_FAMILIES = ("gemma2", "gemma3_text")  # four (1 + w) norms per block, scaled embeddings
SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3") + SANDWICH_FAMILIES


def check_supported(cfg: Any, max_positions: int) -> None:
    """Refuse (UserError) models whose forward this module would compute wrongly."""
    from dynasparse_worker.errors import UserError

    family = getattr(cfg, "model_type", "?")
    if family not in SUPPORTED_FAMILIES:
        raise UserError(f"the engine runs {', '.join(SUPPORTED_FAMILIES)} models, not {family!r}: "
                        "pass a model of one of those families (Gemma 3: its text-only CausalLM)")
    if getattr(cfg, "use_bidirectional_attention", False):
        raise UserError("this Gemma model attends bidirectionally (an embedding model), "
                        "which a generating engine cannot serve")
    window = getattr(cfg, "sliding_window", None)
    windowed = family == "mistral" or getattr(cfg, "use_sliding_window", False)
    if window and windowed and max_positions > window:
        raise UserError(f"this model uses a {window}-token sliding window, which the engine does not "
                        f"implement: set max_seq_len <= {window}")


def _plus_one(norm: Any) -> Tensor:
    """Gemma's RMSNorm scale, 1 + weight in float32 (HF adds it in float32 at every call)."""
    return 1.0 + norm.weight.detach().float()


class DecoderModel:
    """Weights and the forward of a Llama- or Gemma-family decoder; no state beyond weights."""

    def __init__(self, hf_model: Any, max_positions: int, ops: ProjectionOps | None = None,
                 share_weights: bool = True):
        cfg = hf_model.config
        check_supported(cfg, max_positions)
        base = hf_model.get_decoder() if hasattr(hf_model, "get_decoder") else hf_model.model
        attn0 = base.layers[0].self_attn
        heads = cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        self.sandwich = cfg.model_type in SANDWICH_FAMILIES
        # Gemma 3 passes no softcap to its attention even when its config names one
        attn_softcap = getattr(cfg, "attn_logit_softcapping", None) if cfg.model_type == "gemma2" else None
        self.shape = ModelShape(
            num_layers=len(base.layers), hidden=cfg.hidden_size, num_heads=heads,
            num_kv_heads=getattr(cfg, "num_key_value_heads", None) or heads, head_dim=head_dim,
            intermediate=cfg.intermediate_size, vocab=cfg.vocab_size,
            eps=float(getattr(cfg, "rms_norm_eps", 1e-6)),
            scale=float(getattr(attn0, "scaling", head_dim ** -0.5)),
            attn_softcap=float(attn_softcap) if attn_softcap else None,
            final_softcap=float(cfg.final_logit_softcapping)
            if self.sandwich and getattr(cfg, "final_logit_softcapping", None) else None,
        )
        self.ops = ops or LinearOps()
        self.embed = base.embed_tokens.weight.detach()  # [V, hidden]
        self.device, self.dtype = self.embed.device, self.embed.dtype
        self.lm_head = hf_model.get_output_embeddings().weight.detach()  # [V, hidden]
        # CPU float32: an input-major copy of the head. At batch 1 MKL's GEMV reads `[hidden, V]`
        # row by row at ~1.7x the speed of the `[V, hidden]` dot products F.linear runs (SmolLM2:
        # 113 MB per step, ~16 -> ~9.5 ms), for every budget alike; costs one more copy of it.
        self.lm_head_t = (self.lm_head.t().contiguous()  # [hidden, V]
                          if self.device.type == "cpu" and self.dtype == torch.float32 else None)
        self.embed_scale = self._embed_scale(base.embed_tokens, cfg) if self.sandwich else None
        self.head_norm = offset_rms_norm_torch if self.sandwich else rms_norm_torch  # q/k norms
        self.final_norm = _plus_one(base.norm) if self.sandwich else base.norm.weight.detach()
        # attention span per layer: None = every cached entry, W = the last W (Gemma's local layers)
        self.windows: tuple[int | None, ...] = tuple(
            int(layer.self_attn.sliding_window)
            if self.sandwich and getattr(layer.self_attn, "sliding_window", None) else None
            for layer in base.layers)
        rope_kinds = self._rope_kinds(base)  # per layer: the rotary table's name
        self.rope_tables = [self._rope_tables(base, max_positions, kind)
                            for kind in dict.fromkeys(rope_kinds)]  # [(cos [P, D], sin [P, D])]
        self.cos, self.sin = self.rope_tables[0]
        order = list(dict.fromkeys(rope_kinds))
        self.layers = [self._layer(layer, share_weights, order.index(kind))
                       for layer, kind in zip(base.layers, rope_kinds)]

    def _embed_scale(self, embedding: Any, cfg: Any) -> Tensor:
        """sqrt(hidden) rounded to the model dtype, as HF's scaled embedding multiplies by it."""
        scale = getattr(embedding, "embed_scale", None)
        value = scale.detach() if isinstance(scale, Tensor) else torch.tensor(cfg.hidden_size ** 0.5)
        return value.to(device=self.device, dtype=self.dtype)  # []

    def _layer(self, layer: Any, share: bool, rope: int = 0) -> LayerWeights:
        attn, mlp = layer.self_attn, layer.mlp
        qkv, qkv_bias = _fuse([attn.q_proj, attn.k_proj, attn.v_proj], share)
        gate_up, _ = _fuse([mlp.gate_proj, mlp.up_proj], share)
        q_norm = getattr(attn, "q_norm", None)
        k_norm = getattr(attn, "k_norm", None)
        norm = _plus_one if self.sandwich else (lambda n: n.weight.detach())  # noqa: E731
        # Gemma: post_attention_layernorm normalises the attention *output*; the MLP's input
        # norm is pre_feedforward_layernorm. Llama: post_attention_layernorm is the MLP's input.
        mlp_norm = layer.pre_feedforward_layernorm if self.sandwich else layer.post_attention_layernorm
        return LayerWeights(
            attn_norm=norm(layer.input_layernorm), qkv=qkv, qkv_bias=qkv_bias,
            q_norm=norm(q_norm) if q_norm is not None else None,
            k_norm=norm(k_norm) if k_norm is not None else None,
            o=_linear_of(attn.o_proj).weight.detach(), mlp_norm=norm(mlp_norm),
            gate_up=gate_up, down=_linear_of(mlp.down_proj).weight.detach(), act=mlp.act_fn,
            post_attn_norm=norm(layer.post_attention_layernorm) if self.sandwich else None,
            post_mlp_norm=norm(layer.post_feedforward_layernorm) if self.sandwich else None,
            rope=rope,
        )

    @staticmethod
    def _rope_kinds(base: Any) -> list[str]:
        """Per layer, which rotary table it uses: "" (the one `inv_freq`) or Gemma 3's layer type,
        whose rotary module holds `{layer_type}_inv_freq` (local layers: rope_local_base_freq)."""
        rotary = base.rotary_emb
        kinds = []
        for layer in base.layers:
            kind = getattr(layer.self_attn, "layer_type", None) or ""
            kinds.append(kind if hasattr(rotary, f"{kind}_inv_freq") else "")
        return kinds

    def _rope_tables(self, base: Any, max_positions: int, kind: str = "") -> tuple[Tensor, Tensor]:
        rotary = base.rotary_emb
        prefix = f"{kind}_" if kind else ""
        inv_freq = getattr(rotary, f"{prefix}inv_freq").detach().float().to(self.device)  # [D/2]
        scaling = float(getattr(rotary, f"{prefix}attention_scaling", 1.0))
        positions = torch.arange(max_positions, device=self.device, dtype=torch.float32)  # [P]
        freqs = torch.outer(positions, inv_freq)  # [P, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [P, D]
        return (emb.cos() * scaling).to(self.dtype), (emb.sin() * scaling).to(self.dtype)

    def weight_bytes_per_token(self) -> int:
        """Bytes of weights one decode step reads (all projections and the LM head)."""
        total = tensor_bytes(self.lm_head)
        for w in self.layers:
            for t in (w.qkv, w.o, w.gate_up, w.down):
                total += tensor_bytes(t)
        return total

    # -- the forward ---------------------------------------------------------------------------
    def forward(self, tokens: Tensor, positions: Tensor, slots: Tensor, k_cache: Tensor,
                v_cache: Tensor, attend: AttendFn, bucket: int = 0, ops: ProjectionOps | None = None,
                depth: Depth | None = None) -> Tensor:
        """tokens/positions/slots [N]; caches [L, slots, T, Hkv, D] -> normed hidden [N, hidden].

        Token i's K/V are written at (slots[i], positions[i]) of every layer whose attention half
        runs. `ops` overrides `self.ops` (e.g. the ungated dense ops of the budget-1.0 graph);
        `depth[layer] = (attention kept, MLP kept)` is the host-side depth plan: a skipped MLP half
        is not run at all; a skipped attention half only writes its keys and values (so a later,
        denser plan finds no holes in the cache) and adds nothing to the residual. `None` runs
        every half.
        """
        s = self.shape
        ops = ops if ops is not None else self.ops
        x = F.embedding(tokens, self.embed)  # [N, hidden] (the residual stream)
        if self.sandwich:
            return self._forward_sandwich(x * self.embed_scale, positions, slots, k_cache, v_cache,
                                          attend, bucket, ops, depth)
        delta = None  # the previous half's output, added to x by the next fused norm
        for index, w in enumerate(self.layers):
            run_attn, run_mlp = depth[index] if depth is not None else (True, True)
            gate = _input_gate(ops, index, ATTN_IN, bucket, x) if run_attn else None
            h, x = add_rms_norm(delta, x, w.attn_norm, s.eps, gate=gate)  # [N, hidden] each
            if run_attn:
                delta = self._attention(ops, h, w, index, positions, slots, k_cache, v_cache,
                                        attend, bucket)  # [N, hidden]
            else:  # keys and values only; the residual already holds the previous delta
                self._write_kv(h, w, index, positions, slots, k_cache, v_cache)
                delta = None
            if run_mlp:
                gate = _input_gate(ops, index, MLP_IN, bucket, x)
                h, x = add_rms_norm(delta, x, w.mlp_norm, s.eps, gate=gate)  # [N, hidden] each
                a = _project_gated(ops, h, w, index, bucket)  # [N, I]
                delta = ops.project(a, w.down, None, index, MLP_OUT, bucket)  # [N, hidden]
        return add_rms_norm(delta, x, self.final_norm, s.eps)[0]

    def _forward_sandwich(self, x: Tensor, positions: Tensor, slots: Tensor, k_cache: Tensor,
                          v_cache: Tensor, attend: AttendFn, bucket: int, ops: ProjectionOps,
                          depth: Depth | None) -> Tensor:
        """Gemma's blocks on the scaled embeddings x [N, hidden] -> normed hidden [N, hidden].

        Each half is norm -> op -> norm, added to the residual in the model dtype. A skipped half
        adds nothing, as in the gated HF model (its zeroed output normalises to zero).
        """
        eps = self.shape.eps
        for index, w in enumerate(self.layers):
            run_attn, run_mlp = depth[index] if depth is not None else (True, True)
            if run_attn:
                h = offset_rms_norm_torch(x, w.attn_norm, eps)  # [N, hidden]
                a = self._attention(ops, h, w, index, positions, slots, k_cache, v_cache, attend,
                                    bucket)  # [N, hidden]
                x = x + offset_rms_norm_torch(a, w.post_attn_norm, eps)  # [N, hidden]
            else:
                self._write_kv(offset_rms_norm_torch(x, w.attn_norm, eps), w, index, positions,
                               slots, k_cache, v_cache)
            if run_mlp:
                h = offset_rms_norm_torch(x, w.mlp_norm, eps)  # [N, hidden]
                a = _project_gated(ops, h, w, index, bucket)  # [N, I]
                m = ops.project(a, w.down, None, index, MLP_OUT, bucket)  # [N, hidden]
                x = x + offset_rms_norm_torch(m, w.post_mlp_norm, eps)  # [N, hidden]
        return offset_rms_norm_torch(x, self.final_norm, eps)

    def _attention(self, ops: ProjectionOps, h: Tensor, w: LayerWeights, index: int, positions: Tensor,
                   slots: Tensor, k_cache: Tensor, v_cache: Tensor, attend: AttendFn,
                   bucket: int) -> Tensor:
        """The attention half of layer `index` on the normed input h [N, hidden] -> [N, hidden]."""
        s = self.shape
        n_q, n_kv = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim
        qkv = ops.project(h, w.qkv, w.qkv_bias, index, ATTN_IN, bucket)  # [N, (H+2Hkv)D]
        if w.q_norm is not None:  # Qwen3, Gemma 3: per-head RMSNorm of q and k before RoPE
            rows = qkv.shape[0]
            q = self.head_norm(qkv[:, :n_q].view(rows, -1, s.head_dim), w.q_norm, s.eps)
            k = self.head_norm(qkv[:, n_q:n_q + n_kv].view(rows, -1, s.head_dim), w.k_norm, s.eps)
            qkv = torch.cat([q.reshape(rows, -1), k.reshape(rows, -1), qkv[:, n_q + n_kv:]], -1)
        cos, sin = self.rope_tables[w.rope]  # [P, D] each
        q = rope_and_cache(qkv, cos, sin, positions, slots, k_cache[index],
                           v_cache[index], s.num_heads, s.num_kv_heads, s.head_dim)  # [N, H, D]
        o = attend(index, q).reshape(-1, n_q)  # [N, H D]
        return ops.project(o, w.o, None, index, ATTN_OUT, bucket)  # [N, hidden]

    def _write_kv(self, h: Tensor, w: LayerWeights, index: int, positions: Tensor, slots: Tensor,
                  k_cache: Tensor, v_cache: Tensor) -> None:
        """A skipped attention half still writes its keys and values (dense, from the normed
        input h [N, hidden]), so the layer's cache has no holes when a later plan runs it."""
        s = self.shape
        n_q = s.num_heads * s.head_dim
        bias = None if w.qkv_bias is None else w.qkv_bias[n_q:]
        kv = F.linear(h, w.qkv[n_q:], bias)  # [N, 2 Hkv D]: the contiguous K/V rows of qkv
        rows = kv.shape[0]
        if w.k_norm is not None:
            n_kv = s.num_kv_heads * s.head_dim
            k = self.head_norm(kv[:, :n_kv].view(rows, -1, s.head_dim), w.k_norm, s.eps)
            kv = torch.cat([k.reshape(rows, -1), kv[:, n_kv:]], -1)  # [N, 2 Hkv D]
        qkv = torch.cat([kv.new_zeros(rows, n_q), kv], -1)  # [N, (H + 2 Hkv) D], queries unused
        cos, sin = self.rope_tables[w.rope]  # [P, D] each
        rope_and_cache(qkv, cos, sin, positions, slots, k_cache[index], v_cache[index],
                       s.num_heads, s.num_kv_heads, s.head_dim)

    def half_bytes(self) -> HalfBytes:
        """Weight bytes each layer's (attention, MLP) half saves when skipped: a skipped attention
        half still reads its key/value rows (see `_write_kv`)."""
        n_q = self.shape.num_heads * self.shape.head_dim
        return [(tensor_bytes(w.qkv[:n_q]) + tensor_bytes(w.o),
                 tensor_bytes(w.gate_up) + tensor_bytes(w.down)) for w in self.layers]

    def logits(self, hidden: Tensor) -> Tensor:
        """[N, hidden] -> [N, V] float32 (Gemma 2: soft-capped in the model dtype, as HF does)."""
        if self.lm_head_t is not None:
            logits = hidden @ self.lm_head_t  # [N, V]
        else:
            logits = F.linear(hidden, self.lm_head)  # [N, V]
        cap = self.shape.final_softcap
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap  # [N, V]
        return logits.float()
