"""The model runner owns the device: weights (via `DecoderModel`), the KV cache, CUDA graphs, sampling.

`run(batch)` executes one scheduler `Batch`: each prompt chunk is prefilled (eager, SDPA over the
slot's cached prefix), the decode sequences run as one batch — on CUDA by replaying the graph
captured at start-up for the smallest batch bucket that holds them, on the CPU by the same code
eagerly — and the rows that need a token are sampled together, with one device→host sync per step.
Called by `Engine.step()`; imports point one way (engine → runner → model/attention/kv_cache).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from dynasparse_worker.engine.attention import decode_attention, pick_num_splits, prefill_attention
from dynasparse_worker.engine.kv_cache import KVCache, allocate, plan_slots
from dynasparse_worker.engine.model import DecoderModel, LinearOps
from dynasparse_worker.engine.sampling import sample
from dynasparse_worker.engine.scheduler import Batch, PrefillChunk
from dynasparse_worker.engine.sequence import Sequence

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256)


@dataclass(frozen=True)
class RunnerConfig:
    max_batch_size: int = 32  # most sequences decoded together (also the KV slots wanted)
    max_seq_len: int = 2048  # KV tokens per sequence (prompt + output)
    kv_memory_fraction: float = 0.5  # of the free CUDA memory after weights, for the KV cache
    kv_capacity_tokens: int = 65536  # CPU: KV tokens to preallocate
    cuda_graphs: bool = True  # capture one decode graph per batch bucket on CUDA
    batch_buckets: tuple[int, ...] = DEFAULT_BUCKETS


class ModelRunner:
    def __init__(self, hf_model: Any, config: RunnerConfig, state: Any | None = None,
                 ops: LinearOps | None = None):
        self.config = config
        self.state = state
        self.model = DecoderModel(hf_model, config.max_seq_len, ops or LinearOps(state))
        self.device, self.dtype = self.model.device, self.model.dtype
        slots = plan_slots(self.model.shape, self.dtype, self.device, config.max_batch_size,
                           config.max_seq_len, config.kv_memory_fraction, config.kv_capacity_tokens)
        self.cache: KVCache = allocate(self.model.shape, slots, config.max_seq_len, self.dtype,
                                       self.device)
        self.buckets = sorted({b for b in config.batch_buckets if b < slots} | {slots})
        self.inputs = torch.zeros(4, self.buckets[-1], dtype=torch.long, device=self.device)  # [4, Bmax]
        self.host = torch.zeros(4, self.buckets[-1], dtype=torch.long,
                                pin_memory=self.device.type == "cuda")  # [4, Bmax]
        self.host_np = self.host.numpy()
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, Tensor, Tensor]] = {}
        if self.device.type == "cuda" and config.cuda_graphs:
            self._capture_graphs()

    # -- one step ------------------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, batch: Batch) -> dict[str, int]:
        rows: list[Sequence] = []
        logits: list[Tensor] = []
        for chunk in batch.prefill:
            last = self._prefill(chunk)  # [1, V] or None
            if last is not None:
                rows.append(chunk.seq)
                logits.append(last)
        greedy = None
        if batch.decode:
            rows.extend(batch.decode)
            decode_logits, greedy = self._decode(batch.decode)  # [B, V], [B]
            logits.append(decode_logits)
        if not rows:
            return {}
        if greedy is not None and not batch.prefill and all(s.params.temperature <= 0 for s in rows):
            tokens = greedy.tolist()  # argmax already ran inside the graph
        else:
            tokens = self._sample(rows, torch.cat(logits) if len(logits) > 1 else logits[0])
        return {seq.request_id: token for seq, token in zip(rows, tokens)}

    def _prefill(self, chunk: PrefillChunk) -> Tensor | None:
        seq, start, n = chunk.seq, chunk.start, chunk.length
        ids = torch.tensor(seq.prompt_ids[start:start + n], dtype=torch.long).to(self.device)  # [n]
        positions = torch.arange(start, start + n, device=self.device)  # [n]
        cache, scale = self.cache, self.model.shape.scale

        slots = torch.full((n,), seq.slot, dtype=torch.long, device=self.device)  # [n]

        def attend(layer: int, q: Tensor) -> Tensor:
            return prefill_attention(q, cache.k[layer], cache.v[layer], seq.slot, start, scale)

        hidden = self.model.forward(ids, positions, slots, cache.k, cache.v, attend)  # [n, hidden]
        return self.model.logits(hidden[-1:]) if chunk.completes_prompt else None  # [1, V]

    def _decode(self, seqs: list[Sequence]) -> tuple[Tensor, Tensor]:
        """-> logits [count, V] and their argmax [count] (computed in the graph on CUDA)."""
        count = len(seqs)
        bucket = self.buckets[bisect.bisect_left(self.buckets, count)] if self.graphs else count
        host = self.host_np  # [4, Bmax] pinned on CUDA: tokens, positions, slots, lens
        host[0, :count] = [s.last_token for s in seqs]
        host[1, :count] = [s.num_cached for s in seqs]
        host[2, :count] = [s.slot for s in seqs]
        host[3, :count] = host[1, :count] + 1
        host[:, count:bucket] = [[0], [0], [self.cache.scratch_slot], [1]]  # padded rows
        # async from pinned memory: the host buffer is next written after this step's sync
        self.inputs[:, :bucket].copy_(self.host[:, :bucket], non_blocking=True)
        if bucket in self.graphs:
            graph, out, top = self.graphs[bucket]
            graph.replay()
            return out[:count], top[:count]
        out = self._decode_forward(bucket)[:count]  # [count, V]
        return out, out.argmax(dim=-1)

    def _decode_forward(self, bucket: int) -> Tensor:
        """Decode one token for the first `bucket` rows of `self.inputs` -> logits [bucket, V]."""
        tokens, positions, slots, lens = self.inputs[:, :bucket]  # [bucket] each
        cache, shape = self.cache, self.model.shape
        plan_bucket = self._plan_bucket(bucket)
        starts = None
        if self.state is not None and hasattr(self.state, "kv_cap"):
            cap = self.state.kv_cap[plan_bucket]  # [] int64, 0 = unlimited
            starts = torch.where(cap > 0, (lens - cap).clamp(min=0), torch.zeros_like(lens))  # [bucket]
        splits = pick_num_splits(bucket, shape.num_kv_heads, cache.max_seq_len)

        def attend(layer: int, q: Tensor) -> Tensor:
            return decode_attention(q, cache.k[layer], cache.v[layer], slots, lens, starts,
                                    shape.scale, splits)

        hidden = self.model.forward(tokens, positions, slots, cache.k, cache.v, attend,
                                    bucket=plan_bucket)  # [bucket, hidden]
        return self.model.logits(hidden)  # [bucket, V]

    def _plan_bucket(self, batch_size: int) -> int:
        """Index of the sparsity plan's batch bucket for this batch size (0 without a plan)."""
        edges = getattr(self.state, "bucket_edges", None) if self.state is not None else None
        if not edges:
            return 0
        edges = [int(e) for e in edges]
        return min(bisect.bisect_left(edges, batch_size), len(edges) - 1)

    def _sample(self, rows: list[Sequence], logits: Tensor) -> list[int]:
        if all(s.params.temperature <= 0 for s in rows):
            return logits.argmax(dim=-1).tolist()
        params = torch.tensor([[s.params.temperature, s.params.top_p] for s in rows])  # [B, 2]
        ints = torch.tensor([[s.params.top_k, s.seed, len(s.output_ids)] for s in rows])  # [B, 3]
        params, ints = params.to(self.device), ints.to(self.device)
        return sample(logits, params[:, 0], params[:, 1], ints[:, 0], ints[:, 1], ints[:, 2]).tolist()

    # -- CUDA graphs -------------------------------------------------------------------------------
    @torch.inference_mode()
    def _capture_graphs(self) -> None:
        self.inputs[1].zero_()
        self.inputs[2].fill_(self.cache.scratch_slot)
        self.inputs[3].fill_(1)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for bucket in self.buckets:  # warm-up: Triton compiles, cuBLAS picks kernels
                self._decode_forward(bucket)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        pool = None
        for bucket in reversed(self.buckets):  # largest first so smaller ones reuse its pool
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                out = self._decode_forward(bucket)  # [bucket, V]
                top = out.argmax(dim=-1)  # [bucket]
            pool = graph.pool()
            self.graphs[bucket] = (graph, out, top)
        torch.cuda.synchronize()
