"""The model runner owns the device: weights (via `DecoderModel`), the KV cache, CUDA graphs, sampling.

`run(batch)` executes one scheduler `Batch`. The decode sequences run as one batch, on CUDA by
replaying the graph captured at start-up for the smallest batch bucket that holds them, on the CPU
by the same code eagerly. On CUDA the step's prompt chunks ride in that batch as extra rows when
they fit in the largest bucket (`rides_along`); otherwise (long chunks, and always on the CPU,
where an eager forward costs no launch overhead) they are prefilled together in one eager forward
(attention per chunk: SDPA over its slot's cached prefix). The rows that need a token are sampled
together, with one device→host sync per step.

With a `SparsityState` the runner serves the gated model's plan: per batch bucket it
captures the ungated dense graph (budget 1.0: no gate cost at all) and one gated graph per depth
plan the calibrated `PlanTable` offers (skipped attention/MLP halves are not in the graph; width
gates read the state's thresholds inside it, through `kernels.SparseLinearOps`, whose measured
crossover picks the sparse kernel or the masked dense matmul per call shape). Each step picks a
graph on the host from the `HostPlan` that `Engine.apply_budget` hands over with `use_plan`, so a
budget change costs one small read and no capture.
Called by `Engine.step()`; imports point one way (engine → runner → model/attention/kv_cache).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from dynasparse_worker.engine.attention import (decode_attention, decode_attention_one,
                                                pick_num_splits, prefill_attention)
from dynasparse_worker.engine.kv_cache import KVCache, allocate, plan_slots
from dynasparse_worker.engine.model import DecoderModel, LinearOps, ProjectionOps
from dynasparse_worker.engine.plans import (DENSE, GraphKey, HostPlan, Signature, Variant, fallback,
                                            variants_of)
from dynasparse_worker.engine.sampling import sample
from dynasparse_worker.engine.scheduler import Batch, PrefillChunk
from dynasparse_worker.engine.sequence import Sequence
from dynasparse_worker.sparsity import GROUP_NAMES, PlanState, bucket_index

if TYPE_CHECKING:
    from dynasparse_worker.gating.planner import PlanTable

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256)


@dataclass(frozen=True)
class RunnerConfig:
    max_batch_size: int = 32  # most sequences decoded together (also the KV slots wanted)
    max_seq_len: int = 2048  # KV tokens per sequence (prompt + output)
    kv_memory_fraction: float = 0.5  # of the free CUDA memory after weights, for the KV cache
    kv_capacity_tokens: int = 65536  # CPU: KV tokens to preallocate
    cuda_graphs: bool = True  # capture one decode graph per batch bucket on CUDA
    batch_buckets: tuple[int, ...] = DEFAULT_BUCKETS
    kv_sinks: int = 4  # first tokens every sequence keeps attending to when the plan caps the KV
    cpu_sparse_dtype: str = "bfloat16"  # CPU: dtype of the input-major rows the sparse path reads
    prefill_in_decode: bool | None = None  # prompt chunks ride in the decode step (None: with graphs)
    ride_rows: int = 64  # rows beyond the KV slots a decode step keeps for prompt tokens riding along


class ModelRunner:
    def __init__(self, hf_model: Any, config: RunnerConfig, state: PlanState | None = None,
                 ops: ProjectionOps | None = None, table: PlanTable | None = None):
        """`state`: a `SparsityState` (None: the plain dense engine); `ops`: the gated projection
        dispatch (default `kernels.SparseLinearOps`); `table`: the calibrated `PlanTable` whose
        depth plans get a graph each."""
        self.config = config
        self.state = state
        self.table = table
        self.dense_ops = LinearOps(None)
        self.model = DecoderModel(hf_model, config.max_seq_len, self.dense_ops)
        self.device, self.dtype = self.model.device, self.model.dtype
        self.gated_ops: ProjectionOps | None = (
            ops if ops is not None or state is None else self._sparse_ops(state))
        self.half_bytes = self.model.half_bytes()  # [L] (attention, MLP) weight bytes
        self.plan: HostPlan | None = None
        self.captures = 0  # CUDA graphs captured so far (all at start-up)
        self.steps_with_riding_prompts = 0  # steps whose prompt chunks ran as decode rows
        self.speed: Any | None = None  # engine.speed.SpeedTable, measured after capture
        self.last_variant: tuple[int, Variant] | None = None  # (bucket, variant) of the last decode
        slots = plan_slots(self.model.shape, self.dtype, self.device, config.max_batch_size,
                           config.max_seq_len, config.kv_memory_fraction, config.kv_capacity_tokens)
        self.cache: KVCache = allocate(self.model.shape, slots, config.max_seq_len, self.dtype,
                                       self.device)
        rows = slots + (config.ride_rows if self._rides_configured(config) else 0)
        self.buckets = sorted({b for b in config.batch_buckets if b < rows} | {slots, rows})
        self.inputs = torch.zeros(4, self.buckets[-1], dtype=torch.long, device=self.device)  # [4, Bmax]
        self.host = torch.zeros(4, self.buckets[-1], dtype=torch.long,
                                pin_memory=self.device.type == "cuda")  # [4, Bmax]
        self.host_np = self.host.numpy()
        self.graphs: dict[tuple[int, GraphKey], tuple[torch.cuda.CUDAGraph, Tensor, Tensor]] = {}
        self._signatures: dict[tuple[int, float], Signature] = {}
        self._captured: dict[int, set[GraphKey]] = {}  # engine bucket -> its graphs' keys
        if self.device.type == "cuda" and config.cuda_graphs:
            self._capture_graphs()

    def _sparse_ops(self, state: PlanState) -> ProjectionOps:
        from dynasparse_worker.kernels.engine_ops import SparseLinearOps

        cpu_dtype = getattr(torch, self.config.cpu_sparse_dtype) if self.device.type == "cpu" else None
        return SparseLinearOps(state, cpu_dtype=cpu_dtype, max_batch=64, device_type=self.device.type)

    # -- the plan ------------------------------------------------------------------------------
    def use_plan(self, plan: HostPlan) -> None:
        """Serve `plan` from the next step on (`Engine.apply_budget` hands it over, on the engine
        thread, right after writing the same plan into the state's device tensors)."""
        self.plan = plan

    def current_plan(self) -> HostPlan | None:
        """The host view of the plan the state holds (None for the plain dense engine)."""
        return self.plan if self.state is not None else None

    def _ops_for(self, variant: Variant, width: float, signature: Signature | None = None
                 ) -> ProjectionOps:
        if not variant[0]:
            return self.dense_ops
        ops = self.gated_ops
        ops.expected_sparsity = width  # what `choose` compares with the measured crossover
        ops.forced = signature or None  # kernels fixed per group (a measured choice)
        return ops

    def chosen_signature(self, bucket: int, variant: Variant, width: float) -> Signature | None:
        """The kernels the speed table measured fastest for this plan (None: not measured)."""
        if self.speed is None or not variant[0]:
            return None
        return self.speed.signature_for(bucket, variant, width)

    # -- one step ------------------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, batch: Batch) -> dict[str, int]:
        rows: list[Sequence] = []
        logits: list[Tensor] = []
        riding = batch.prefill if self.rides_along(batch) else []
        self.steps_with_riding_prompts += bool(riding)
        if batch.prefill and not riding:
            done, last = self._prefill(batch.prefill)  # [len(done), V] or None
            if last is not None:
                rows.extend(done)
                logits.append(last)
        greedy = None
        if batch.decode or riding:
            done, step_logits, greedy = self._decode(batch.decode, riding)  # [R, V], [R]
            rows.extend(done)
            logits.append(step_logits)
        if not rows:
            return {}
        if greedy is not None and len(logits) == 1 and all(s.params.temperature <= 0 for s in rows):
            tokens = greedy.tolist()  # argmax already ran inside the graph
        else:
            tokens = self._sample(rows, torch.cat(logits) if len(logits) > 1 else logits[0])
        return {seq.request_id: token for seq, token in zip(rows, tokens)}

    @property
    def max_step_rows(self) -> int | None:
        """Most token rows (decoded tokens + prompt tokens riding along) one decode step runs:
        the largest captured batch bucket, or None when prompts never ride in the decode step."""
        return self.buckets[-1] if self._prompts_ride else None

    @property
    def _prompts_ride(self) -> bool:
        ride = self.config.prefill_in_decode
        return bool(self.graphs) if ride is None else ride

    def _rides_configured(self, config: RunnerConfig) -> bool:
        """Whether prompts will ride (decided before capture: graphs are captured on CUDA)."""
        if config.prefill_in_decode is not None:
            return config.prefill_in_decode
        return self.device.type == "cuda" and config.cuda_graphs

    def rides_along(self, batch: Batch) -> bool:
        """Whether the step's prompt chunks run as extra rows of the decode step (one graph
        replay) instead of a separate eager prefill forward. A prompt token at position p of a
        slot is a decode row whose length is p + 1: its K/V are written before any row of the
        layer attends, so the rows of one chunk see each other causally. On CUDA this turns the
        prefill of short prompts, which costs host time (hundreds of kernel launches) rather
        than GPU time, into a few more rows of a captured graph."""
        if not batch.prefill or not self._prompts_ride:
            return False
        rows = len(batch.decode) + sum(c.length for c in batch.prefill)
        return rows <= self.buckets[-1]

    def _prefill(self, chunks: list[PrefillChunk]) -> tuple[list[Sequence], Tensor | None]:
        """All prompt chunks of a step in ONE forward (their tokens side by side; attention per
        chunk over its own slot) -> the sequences whose prompt completed and their last logits."""
        ids_host: list[int] = []
        pos_host: list[int] = []
        slot_host: list[int] = []
        spans: list[tuple[int, int, PrefillChunk]] = []
        for chunk in chunks:
            seq, start, n = chunk.seq, chunk.start, chunk.length
            spans.append((len(ids_host), len(ids_host) + n, chunk))
            ids_host += seq.prompt_ids[start:start + n]
            pos_host += range(start, start + n)
            slot_host += [seq.slot] * n
        packed = torch.tensor([ids_host, pos_host, slot_host], dtype=torch.long)  # [3, N]
        ids, positions, slots = packed.to(self.device)  # [N] each
        cache, scale = self.cache, self.model.shape.scale
        windows, softcap = self.model.windows, self.model.shape.attn_softcap

        def attend(layer: int, q: Tensor) -> Tensor:  # q [N, H, D]
            outs = [prefill_attention(q[a:b], cache.k[layer], cache.v[layer], c.seq.slot, c.start,
                                      scale, windows[layer], softcap) for a, b, c in spans]
            return outs[0] if len(outs) == 1 else torch.cat(outs)  # [N, H, D]

        # The chunks' tokens read the union of their active rows, as a decode step of as many
        # sequences does, so they follow the plan of that batch bucket: at a low budget prefill
        # gets cheaper too (depth), where the batch-1 plan's width gates would save little.
        plan = self.current_plan()
        plan_bucket = self.plan_bucket(len(ids_host))
        variant = plan.variants[plan_bucket] if plan is not None else DENSE
        ops = self._ops_for(variant, plan.width_sparsity[plan_bucket] if plan is not None else 0.0)
        hidden = self.model.forward(ids, positions, slots, cache.k, cache.v, attend,
                                    bucket=plan_bucket, ops=ops, depth=variant[1])  # [N, hidden]
        done = [(b - 1, c.seq) for a, b, c in spans if c.completes_prompt]
        if not done:
            return [], None
        last = torch.tensor([i for i, _ in done], device=self.device)  # [D]
        return [seq for _, seq in done], self.model.logits(hidden[last])  # [D, V]

    def _decode(self, seqs: list[Sequence], chunks: list[PrefillChunk]
                ) -> tuple[list[Sequence], Tensor, Tensor]:
        """One decode step of `seqs` with `chunks`' prompt tokens as extra rows -> the sequences
        that get a token (the decoded ones, then those whose prompt completed), their logits
        [R, V] and argmax [R] (computed in the graph on CUDA)."""
        count = len(seqs)
        host = self.host_np  # [4, Bmax] pinned on CUDA: tokens, positions, slots, lens
        host[0, :count] = [s.last_token for s in seqs]
        host[1, :count] = [s.num_cached for s in seqs]
        host[2, :count] = [s.slot for s in seqs]
        host[3, :count] = host[1, :count] + 1
        rows, picked, done = count, list(range(count)), list(seqs)
        for chunk in chunks:
            seq, start, n = chunk.seq, chunk.start, chunk.length
            host[0, rows:rows + n] = seq.prompt_ids[start:start + n]
            host[1, rows:rows + n] = range(start, start + n)
            host[2, rows:rows + n] = seq.slot
            host[3, rows:rows + n] = host[1, rows:rows + n] + 1
            rows += n
            if chunk.completes_prompt:
                picked.append(rows - 1)
                done.append(seq)
        bucket = self.graph_bucket(rows) if self.graphs else rows
        host[:, rows:bucket] = [[0], [0], [self.cache.scratch_slot], [1]]  # padded rows
        # async from pinned memory: the host buffer is next written after this step's sync
        self.inputs[:, :bucket].copy_(self.host[:, :bucket], non_blocking=True)
        out, top = self._decode_rows(bucket)  # [bucket, V], [bucket]
        if len(picked) == rows:
            return done, out[:rows], top[:rows]
        index = torch.tensor(picked, dtype=torch.long).to(self.device, non_blocking=True)  # [R]
        return done, out[index], top[index]

    def _decode_rows(self, bucket: int) -> tuple[Tensor, Tensor]:
        """Run the first `bucket` rows of `self.inputs` under the current plan -> logits
        [bucket, V] and their argmax [bucket]: the captured graph's replay, else eagerly."""
        plan = self.current_plan()
        plan_bucket = self.plan_bucket(bucket)
        variant = plan.variants[plan_bucket] if plan is not None else DENSE
        width = plan.width_sparsity[plan_bucket] if plan is not None else 0.0
        chosen = self.chosen_signature(bucket, variant, width)
        if self.graphs:
            captured = self.graph_for(bucket, variant, width)
            if captured is not None:
                self.last_variant = (bucket, captured[0])
                graph, out, top = self.graphs[bucket, captured]
                graph.replay()
                return out, top
        self.last_variant = (bucket, variant)  # eager: CPU, or a plan no graph was captured for
        out = self.decode_forward(bucket, variant, width, chosen)  # [bucket, V]
        return out, out.argmax(dim=-1)

    def decode_forward(self, bucket: int, variant: Variant = DENSE, width: float = 0.0,
                       signature: Signature | None = None) -> Tensor:
        """Decode one token for the first `bucket` rows of `self.inputs` -> logits [bucket, V].

        `variant` = (width gates on, depth plan); the KV cap and thresholds are read from the
        state's device tensors, so one capture serves every budget with this depth plan."""
        tokens, positions, slots, lens = self.inputs[:, :bucket]  # [bucket] each
        cache, shape = self.cache, self.model.shape
        plan_bucket = self.plan_bucket(bucket)
        starts, sinks = None, 0
        if self.state is not None:
            cap = self.state.kv_cap[plan_bucket]  # [] int64, 0 = unlimited
            sinks = self.config.kv_sinks
            # the window keeps `cap` entries: `sinks` first ones + the most recent cap - sinks
            recent = (cap - sinks).clamp(min=1)  # []
            starts = torch.where(cap > 0, (lens - recent).clamp(min=0), torch.zeros_like(lens))  # [bucket]
        splits = pick_num_splits(bucket, shape.num_kv_heads, cache.max_seq_len)
        longest = int(lens.max()) if self.device.type == "cpu" else None  # once per step, not layer
        windows, softcap = self.model.windows, shape.attn_softcap
        local = self._window_starts(windows, lens, starts)  # Gemma's local layers: {W: [bucket]}
        # CPU, one sequence, no KV cap in effect: attend over cache views (host ints read once
        # per step) instead of gathering and masking in every layer
        one = None
        if longest is not None and bucket == 1 and softcap is None:
            if starts is None or int(starts[0]) == 0:
                one = int(slots[0])

        def attend(layer: int, q: Tensor) -> Tensor:
            window = windows[layer]
            if one is not None and window is None:
                return decode_attention_one(q, cache.k[layer], cache.v[layer], one, longest,
                                            shape.scale)
            if window is not None:  # the last W entries (within the KV cap's, no sinks)
                return decode_attention(q, cache.k[layer], cache.v[layer], slots, lens,
                                        local[window], shape.scale, splits, longest=longest,
                                        softcap=softcap)
            return decode_attention(q, cache.k[layer], cache.v[layer], slots, lens, starts,
                                    shape.scale, splits, sinks=sinks, longest=longest,
                                    softcap=softcap)

        hidden = self.model.forward(tokens, positions, slots, cache.k, cache.v, attend,
                                    bucket=plan_bucket, ops=self._ops_for(variant, width, signature),
                                    depth=variant[1])  # [bucket, hidden]
        return self.model.logits(hidden)  # [bucket, V]

    @staticmethod
    def _window_starts(windows: tuple[int | None, ...], lens: Tensor, starts: Tensor | None
                       ) -> dict[int, Tensor]:
        """First visible entry of each sliding window W: lens - W, or the KV cap's later start.

        A local layer never attends past its window, so the cap's sinks do not apply to it: under
        a cap it reads the most recent min(W, cap - sinks) entries. {} for global-only models."""
        out = {}
        for window in {w for w in windows if w is not None}:
            first = (lens - window).clamp(min=0)  # [bucket]
            out[window] = first if starts is None else torch.maximum(first, starts)
        return out

    def plan_bucket(self, batch_size: int) -> int:
        """Index of the sparsity plan's batch bucket for this batch size (0 without a plan)."""
        if self.state is None:
            return 0
        return bucket_index(self.state.bucket_edges, batch_size)

    def graph_bucket(self, rows: int) -> int:
        """The smallest engine batch bucket (a captured graph's batch) that holds `rows` rows."""
        return self.buckets[bisect.bisect_left(self.buckets, rows)]

    def _sample(self, rows: list[Sequence], logits: Tensor) -> list[int]:
        if all(s.params.temperature <= 0 for s in rows):
            return logits.argmax(dim=-1).tolist()
        params = torch.tensor([[s.params.temperature, s.params.top_p] for s in rows])  # [B, 2]
        ints = torch.tensor([[s.params.top_k, s.seed, len(s.output_ids)] for s in rows])  # [B, 3]
        params, ints = params.to(self.device), ints.to(self.device)
        return sample(logits, params[:, 0], params[:, 1], ints[:, 0], ints[:, 1], ints[:, 2]).tolist()

    # -- CUDA graphs -------------------------------------------------------------------------------
    def graph_variants(self, bucket: int) -> dict[GraphKey, float]:
        """(variant, signature) pairs captured for an engine batch bucket -> width each is built for."""
        if self.state is None:
            return {(DENSE, ()): 0.0}
        return variants_of(self.table, self.plan_bucket(bucket), self.half_bytes,
                           lambda width: self.signature(bucket, width), alternatives=True)

    def signature(self, rows: int, width: float) -> Signature:
        """The kernel per projection group that the gated ops pick for `rows` at `width` (cached)."""
        key = (rows, round(width, 6))
        sig = self._signatures.get(key)
        if sig is None:
            ops = self.gated_ops
            policy = ops.policy if ops is not None else None
            if policy is None:
                sig = ()
            else:
                saved = ops.expected_sparsity
                ops.expected_sparsity = width
                try:
                    sig = tuple(policy(rows, group) for group in GROUP_NAMES)
                finally:
                    ops.expected_sparsity = saved
            self._signatures[key] = sig
        return sig

    def captured(self, bucket: int) -> set[GraphKey]:
        """The keys of the graphs captured for engine batch bucket `bucket` (empty on the CPU)."""
        return self._captured.get(bucket, set())

    def graph_for(self, bucket: int, variant: Variant, width: float) -> GraphKey | None:
        """The captured graph of engine bucket `bucket` that serves `variant` at `width`, or None."""
        captured = self.captured(bucket)
        signature = self.chosen_signature(bucket, variant, width) or self.signature(
            bucket, width if variant[0] else 0.0)
        return fallback(variant, signature, captured)

    @torch.inference_mode()
    def _capture_graphs(self) -> None:
        self.inputs[1].zero_()
        self.inputs[2].fill_(self.cache.scratch_slot)
        self.inputs[3].fill_(1)
        todo = [(b, v, w) for b in self.buckets for v, w in self.graph_variants(b).items()]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for bucket, (variant, sig), width in todo:  # warm-up: packing, compiles, cuBLAS picks
                self.decode_forward(bucket, variant, width, sig or None)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        pool = None
        for bucket, key, width in sorted(todo, key=lambda t: -t[0]):  # largest first: shared pool
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                out = self.decode_forward(bucket, key[0], width, key[1] or None)  # [bucket, V]
                top = out.argmax(dim=-1)  # [bucket]
            pool = graph.pool()
            self.graphs[bucket, key] = (graph, out, top)
            self._captured.setdefault(bucket, set()).add(key)
            self.captures += 1
        torch.cuda.synchronize()
