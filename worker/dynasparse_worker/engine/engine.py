"""The engine: `step()` = schedule → run → postprocess; requests in, `TokenEvent`s out.

Synchronous and single-threaded (the server runs it in one thread, see docs/DESIGN.md). Owns a
`Scheduler` (pure policy) and a `ModelRunner` (the device). With `detokenize` on (the default) it
turns new tokens into text after each step and applies stop strings (`engine.detokenizer`); the
server turns it off and runs the same detokenizer on its output stage, off the engine thread. A step
that raises is retried sequence by sequence, so only the request that broke it fails. Built by the
HTTP server, `dynasparse bench` and the tests, usually through `Engine.from_loaded(...)`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields
from typing import Any

import torch

from dynasparse_worker.engine.detokenizer import Detokenizer, TextState, Update
from dynasparse_worker.engine.model import ProjectionOps
from dynasparse_worker.engine.model_runner import DEFAULT_BUCKETS, ModelRunner, RunnerConfig
from dynasparse_worker.engine.plans import HostPlan, host_plan, read_plan
from dynasparse_worker.engine.scheduler import Batch, Scheduler, SchedulerConfig
from dynasparse_worker.engine.sequence import Sequence, Status
from dynasparse_worker.engine.types import EngineStats, SamplingParams, TokenEvent, stop_ids_for
from dynasparse_worker.errors import UserError
from dynasparse_worker.gating.controller import GatedModel
from dynasparse_worker.sparsity import PlanState


@dataclass(frozen=True)
class AppliedBudget:
    """What `Engine.apply_budget` put in place: the budget, its plan, the expected quality loss."""

    budget: float
    plan: HostPlan
    expected_loss: float


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
    prefill_in_decode: bool | None = None  # prompt chunks ride in the decode step (None: with graphs)
    ride_rows: int = 64  # rows beyond the KV slots a decode step keeps for prompt tokens riding along
    detokenize: bool = True  # text and stop strings in the engine (off: the caller detokenizes)

    def runner_config(self) -> RunnerConfig:
        names = {f.name for f in fields(RunnerConfig)}
        return RunnerConfig(**{n: getattr(self, n) for n in names})


class Engine:
    def __init__(self, model: Any, tokenizer: Any | None = None, config: EngineConfig | None = None,
                 state: PlanState | None = None, ops: ProjectionOps | None = None,
                 speed_timer: Any | None = None):
        """`model`: a HF causal LM (eval mode, on its device) or a `gating.GatedModel`; `state`: the
        gated model's `SparsityState` (taken from a GatedModel when not given); `ops`: a
        `model.ProjectionOps` dispatch (default: `kernels.SparseLinearOps` when there is a state).
        A GatedModel's calibrated table decides which depth plans get a CUDA graph each; each level
        is then timed (`engine.speed`: on CUDA always, elsewhere with `speed_timer`) and only
        levels faster than every denser one are offered."""
        self.gated: GatedModel | None = None
        if isinstance(model, GatedModel):
            self.gated = model
            state, model = state if state is not None else model.state, model.model
        elif state is not None and getattr(model, "dynasparse_gated", None) is not None:
            self.gated = model.dynasparse_gated  # a gated HF model (install_gates' back-reference)
        table = self.gated.table if self.gated is not None else None
        self.config = config or EngineConfig()
        self.tokenizer = tokenizer
        self.runner = ModelRunner(model, self.config.runner_config(), state=state, ops=ops,
                                  table=table)
        cache = self.runner.cache
        self.scheduler = Scheduler(SchedulerConfig(
            num_slots=cache.num_slots, max_seq_len=cache.max_seq_len,
            kv_capacity_tokens=cache.capacity_tokens,
            max_prefill_tokens=self.config.max_prefill_tokens,
            max_step_rows=self.runner.max_step_rows,
        ))
        self.speed = None  # engine.speed.SpeedTable: measured step time of every plan level
        if table is not None and self.gated is not None and (
                speed_timer is not None or self.runner.graphs):
            from dynasparse_worker.engine.speed import measure_speed

            self.speed = measure_speed(self.runner, self.gated, self.apply_budget, speed_timer)
        self._speed_stats = self.speed.stats() if self.speed is not None else {}  # fixed from here on
        self.eos_ids = _eos_ids(model, tokenizer)
        detokenize = self.config.detokenize and tokenizer is not None
        self.detokenizer = Detokenizer(tokenizer) if detokenize else None
        self.refresh_plan()
        self._pending: list[TokenEvent] = []  # cancellations reported by the next step
        self._tokens_total = 0
        self._steps_total = 0

    @classmethod
    def from_loaded(cls, loaded: Any, config: EngineConfig | None = None,
                    state: PlanState | None = None,
                    ops: ProjectionOps | None = None) -> "Engine":
        """Build from `dynasparse_worker.models.load_model(spec, device)`'s `LoadedModel`."""
        return cls(loaded.model, loaded.tokenizer, config, state=state, ops=ops)

    # -- the budget ----------------------------------------------------------------------------
    def apply_budget(self, budget: float, kv_cap: int | None = None) -> AppliedBudget:
        """Write the plan of `budget` into the gated model's device tensors and hand its host view
        to the runner, so the next step runs it. Call between steps, on the engine's thread."""
        if self.gated is None:
            raise UserError("this engine has no gated model: build it from a GatedModel "
                            "(gating.install_gates) to change the budget")
        plan = self.gated.set_budget(budget, kv_cap)  # a CPU plan, already copied to the device
        state = self.runner.state
        # The values as the state's tensors hold them (float32), so host and device plans agree.
        stored = float(torch.tensor(plan.budget, dtype=state.budget.dtype))
        host = host_plan(plan.thresholds, plan.layer_keep, stored, plan.kv_cap.tolist(),
                         self.runner.half_bytes)
        self.runner.use_plan(host)
        loss = float(plan.expected_loss[state.active_bucket].to(state.expected_loss.dtype))
        return AppliedBudget(stored, host, loss)

    def refresh_plan(self) -> HostPlan | None:
        """Read the state's plan to the host and hand it to the runner: after writing the
        `SparsityState` tensors by other means than `apply_budget` (tests, experiments)."""
        if self.runner.state is None:
            return None
        plan = read_plan(self.runner.state, self.runner.half_bytes)
        self.runner.use_plan(plan)
        return plan

    @property
    def floor(self) -> float:
        """The sparsest budget the calibration offers (1.0 without a gated model)."""
        return float(self.gated.floor) if self.gated is not None else 1.0

    # -- requests ------------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt_token_ids: list[int],
                    params: SamplingParams | None = None) -> None:
        params = params or SamplingParams()
        problems = params.problems()
        if problems:
            raise UserError(f"request {request_id}: " + "; ".join(problems))
        seed = params.seed if params.seed is not None else random.getrandbits(32)
        seq = Sequence(request_id, list(prompt_token_ids), params, seed=seed,
                       stop_ids=self.stop_ids(params))
        if self.detokenizer is not None:
            seq.text = TextState(params.stop_strings, seq.stop_ids)
        try:
            self.scheduler.add(seq)
        except ValueError as exc:
            raise UserError(str(exc)) from exc

    def stop_ids(self, params: SamplingParams) -> frozenset[int]:
        """Token ids that end a request with these parameters (EOS unless ignored)."""
        return stop_ids_for(params, self.eos_ids)

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
        sampled = self._run(batch) if batch else {}
        return self._postprocess(batch, sampled)

    def _run(self, batch: Batch) -> dict[str, int]:
        try:
            return self.runner.run(batch)
        except Exception:  # noqa: BLE001 - find the sequence that breaks it; the others go on
            return self._run_one_by_one(batch)

    def _run_one_by_one(self, batch: Batch) -> dict[str, int]:
        """Rerun the failed step one sequence at a time (K/V writes of a retried position are the
        same values again) and finish with an error only the sequences that still fail."""
        sampled: dict[str, int] = {}
        parts = [Batch(prefill=[c]) for c in batch.prefill] + [Batch(decode=[s]) for s in batch.decode]
        for part in parts:
            seq = part.prefill[0].seq if part.prefill else part.decode[0]
            try:
                sampled.update(self.runner.run(part))
            except Exception as exc:  # noqa: BLE001 - this request alone fails
                self.scheduler.finish(seq, f"error: {type(exc).__name__}: {exc}")
                self._pending.append(self._event(seq, []))
        return sampled

    def _postprocess(self, batch: Batch, sampled: dict[str, int]) -> list[TokenEvent]:
        events, self._pending = self._pending, []
        self._steps_total += 1 if batch else 0
        touched = self.scheduler.postprocess(batch, sampled)
        self._tokens_total += len(touched)
        if self.detokenizer is None:
            return events + [self._event(seq, [seq.output_ids[-1]]) for seq in touched]
        updates = [Update(seq.text, seq.output_ids[-1:], seq.status is Status.FINISHED)
                   for seq in touched]
        for seq, text in zip(touched, self.detokenizer.step(updates)):
            if seq.text.stopped:
                self.scheduler.finish(seq, "stop")
            events.append(self._event(seq, [seq.output_ids[-1]], text))
        return events

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
                   "steps_with_riding_prompts": float(self.runner.steps_with_riding_prompts),
                   **self._speed_stats},
        )


def _eos_ids(model: Any, tokenizer: Any | None) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None), tokenizer):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids
