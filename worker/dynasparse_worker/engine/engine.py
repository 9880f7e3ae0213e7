"""The engine: `step()` = schedule → run → postprocess; requests in, `TokenEvent`s out.

Synchronous and single-threaded (the server runs it in one thread, see docs/DESIGN.md). Owns a
`Scheduler` (pure policy) and a `ModelRunner` (the device); after each step it detokenizes the new
tokens incrementally, applies stop strings, and reports finished requests. Built by the HTTP server,
`dynasparse bench` and the tests, usually through `Engine.from_loaded(load_model(spec), ...)`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields
from typing import Any

from dynasparse_worker.engine.model_runner import DEFAULT_BUCKETS, ModelRunner, RunnerConfig
from dynasparse_worker.engine.scheduler import Batch, Scheduler, SchedulerConfig
from dynasparse_worker.engine.sequence import Sequence, Status
from dynasparse_worker.engine.types import EngineStats, SamplingParams, TokenEvent
from dynasparse_worker.errors import UserError


@dataclass(frozen=True)
class EngineConfig:
    max_batch_size: int = 32  # most sequences decoded together (KV slots wanted)
    max_seq_len: int = 2048  # KV tokens per sequence (prompt + output)
    kv_memory_fraction: float = 0.5  # CUDA: fraction of free device memory given to the KV cache
    kv_capacity_tokens: int = 65536  # CPU: KV tokens preallocated
    max_prefill_tokens: int = 512  # prompt tokens prefilled per step (chunked prefill)
    cuda_graphs: bool = True  # capture decode graphs per batch bucket at start-up (CUDA only)
    batch_buckets: tuple[int, ...] = DEFAULT_BUCKETS
    kv_sinks: int = 4  # first tokens kept in attention when the plan caps the KV cache
    cpu_sparse_dtype: str = "bfloat16"  # CPU: dtype of the rows the input-sparse path reads

    def runner_config(self) -> RunnerConfig:
        names = {f.name for f in fields(RunnerConfig)}
        return RunnerConfig(**{n: getattr(self, n) for n in names})


class Engine:
    def __init__(self, model: Any, tokenizer: Any | None = None, config: EngineConfig | None = None,
                 state: Any | None = None, ops: Any | None = None, speed_timer: Any | None = None):
        """`model`: a HF causal LM (eval mode, on its device) or a `gating.GatedModel`; `state`: the
        gated model's `SparsityState` (taken from a GatedModel when not given); `ops`: a
        `model.LinearOps`-like dispatch (default: `kernels.SparseLinearOps` when there is a state).
        A GatedModel's calibrated table decides which depth plans get a CUDA graph each; each level
        is then timed (`engine.speed`: on CUDA always, elsewhere with `speed_timer`) and only
        levels faster than every denser one are offered."""
        self.gated = None
        table = None
        if hasattr(model, "set_budget") and hasattr(model, "state"):
            self.gated, table = model, getattr(model, "table", None)  # a gating.GatedModel
            state, model = state if state is not None else model.state, model.model
        elif state is not None and getattr(model, "dynasparse_gated", None) is not None:
            self.gated = model.dynasparse_gated  # a gated HF model (install_gates' back-reference)
            table = getattr(self.gated, "table", None)
        self.config = config or EngineConfig()
        self.tokenizer = tokenizer
        self.runner = ModelRunner(model, self.config.runner_config(), state=state, ops=ops,
                                  table=table)
        cache = self.runner.cache
        self.scheduler = Scheduler(SchedulerConfig(
            num_slots=cache.num_slots, max_seq_len=cache.max_seq_len,
            kv_capacity_tokens=cache.capacity_tokens,
            max_prefill_tokens=self.config.max_prefill_tokens,
        ))
        self.speed = None  # engine.speed.SpeedTable: measured step time of every plan level
        if table is not None and self.gated is not None and (
                speed_timer is not None or self.runner.graphs):
            from dynasparse_worker.engine.speed import measure_speed

            self.speed = measure_speed(self.runner, self.gated, speed_timer)
        self.eos_ids = _eos_ids(model, tokenizer)
        self._pending: list[TokenEvent] = []  # cancellations reported by the next step
        self._tokens_total = 0
        self._steps_total = 0

    @classmethod
    def from_loaded(cls, loaded: Any, config: EngineConfig | None = None, state: Any | None = None,
                    ops: Any | None = None) -> "Engine":
        """Build from `dynasparse_worker.models.load_model(spec, device)`'s `LoadedModel`."""
        return cls(loaded.model, loaded.tokenizer, config, state=state, ops=ops)

    # -- the budget ----------------------------------------------------------------------------
    def set_budget(self, budget: float, kv_cap: int | None = None) -> Any:
        """`GatedModel.set_budget` (in-place copies), then the host view the next step picks its
        graph from. Calling `GatedModel.set_budget` directly works too: the runner notices the
        state's tensors moved at the next step. Returns the plan."""
        if self.gated is None:
            raise UserError("this engine has no gated model: build it from a GatedModel "
                            "(gating.install_gates) to change the budget")
        plan = self.gated.set_budget(budget, kv_cap)
        self.runner.current_plan()
        return plan

    # -- requests ------------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt_token_ids: list[int],
                    params: SamplingParams | None = None) -> None:
        params = params or SamplingParams()
        stop = set(params.stop_token_ids) | (set() if params.ignore_eos else self.eos_ids)
        seed = params.seed if params.seed is not None else random.getrandbits(32)
        seq = Sequence(request_id, list(prompt_token_ids), params, seed=seed, stop_ids=frozenset(stop))
        try:
            self.scheduler.add(seq)
        except ValueError as exc:
            raise UserError(str(exc)) from exc

    def cancel(self, request_id: str) -> bool:
        """Drop a request; its final event (finish_reason "cancelled") comes with the next step."""
        seq = self.scheduler.cancel(request_id)
        if seq is None:
            return False
        self._pending.append(self._event(seq, []))
        return True

    def has_work(self) -> bool:
        return self.scheduler.has_work() or bool(self._pending)

    # -- one step ------------------------------------------------------------------------------
    def step(self) -> list[TokenEvent]:
        batch = self.scheduler.schedule()
        sampled = self.runner.run(batch) if batch else {}
        return self._postprocess(batch, sampled)

    def _postprocess(self, batch: Batch, sampled: dict[str, int]) -> list[TokenEvent]:
        events, self._pending = self._pending, []
        self._steps_total += 1 if batch else 0
        for seq in self.scheduler.postprocess(batch, sampled):
            self._tokens_total += 1
            events.append(self._emit(seq))
        return events

    def _emit(self, seq: Sequence) -> TokenEvent:
        """Detokenize the new token, cut at a stop string, and build the event."""
        token = seq.output_ids[-1]
        if self.tokenizer is None:
            return self._event(seq, [token])
        finished = seq.status is Status.FINISHED
        if not (finished and seq.finish_reason == "stop" and token in seq.stop_ids):
            seq.text += self._new_text(seq)
        stops = seq.params.stop_strings
        if stops:
            window = seq.emitted_chars - max(len(s) for s in stops)
            hits = [i for i in (seq.text.find(s, max(0, window)) for s in stops) if i >= 0]
            if hits:
                seq.text = seq.text[:min(hits)]
                if not finished:
                    self.scheduler.finish(seq, "stop")
                finished = True
        upto = len(seq.text) if finished or not stops else len(seq.text) - _held_back(seq.text, stops)
        text = seq.text[seq.emitted_chars:max(upto, seq.emitted_chars)]
        seq.emitted_chars = max(upto, seq.emitted_chars)
        return self._event(seq, [token], text)

    def _new_text(self, seq: Sequence) -> str:
        """Incremental detokenization: decode a short window so multi-token characters come out whole."""
        ids = seq.output_ids
        before = self.tokenizer.decode(ids[seq.prefix_offset:seq.read_offset], skip_special_tokens=True)
        after = self.tokenizer.decode(ids[seq.prefix_offset:], skip_special_tokens=True)
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""  # an incomplete UTF-8 sequence: wait for the next token
        seq.prefix_offset, seq.read_offset = seq.read_offset, len(ids)
        return after[len(before):]

    def _event(self, seq: Sequence, tokens: list[int], text: str = "") -> TokenEvent:
        finished = seq.status is Status.FINISHED
        return TokenEvent(
            request_id=seq.request_id, token_ids=tokens, text=text, finished=finished,
            finish_reason=seq.finish_reason if finished else None,
            prompt_tokens=len(seq.prompt_ids), completion_tokens=len(seq.output_ids),
        )

    # -- reports -------------------------------------------------------------------------------
    def stats(self) -> EngineStats:
        sched, cache = self.scheduler, self.runner.cache
        return EngineStats(
            queue_depth=len(sched.waiting) + len(sched.prefilling), running=len(sched.running),
            kv_usage=sched.used_tokens() / cache.capacity_tokens,
            kv_capacity_tokens=cache.capacity_tokens, tokens_generated_total=self._tokens_total,
            steps_total=self._steps_total,
            extra={"kv_reserved": sched.reserved_tokens / cache.capacity_tokens,
                   "cuda_graphs": float(len(self.runner.graphs)),
                   "graph_captures": float(self.runner.captures),
                   **(self.speed.stats() if self.speed is not None else {})},
        )


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Characters at the end of `text` that could still grow into a stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if stop.startswith(text[-n:]):
                longest = n
                break
    return longest


def _eos_ids(model: Any, tokenizer: Any | None) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None), tokenizer):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids
