"""The pure scheduler: admission with KV accounting, continuous batching, chunked prefill beside decode.

No torch: unit-tested on its own (tests/engine/test_scheduler.py). Called by `Engine.step()`.

Policy, each step:
* every running sequence decodes one token (the decode batch never waits for prefill);
* admitted sequences whose prompt is not yet cached get prefill chunks, FIFO, until
  `max_prefill_tokens` are spent — so a long prompt is split over several steps, interleaved with decode;
  while sequences decode and the runner runs prompt tokens as extra rows of the decode step
  (`max_step_rows`), the chunks fill only the rows the decode batch leaves free (at least
  `MIN_CHUNK_TOKENS`), so running streams keep their step time when a burst of prompts arrives;
* waiting sequences are admitted FIFO when a KV slot is free and their whole reservation
  (prompt + allowed new tokens) fits in the KV capacity still unreserved. Reserving up front means no
  preemption is ever needed, and FIFO admission means no request is overtaken forever (no starvation).
Finishing or cancelling a sequence returns its slot and its reservation at once.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from dynasparse_worker.engine.sequence import Sequence, Status


@dataclass(frozen=True)
class SchedulerConfig:
    num_slots: int  # sequences that can hold KV at once (the largest decode batch)
    max_seq_len: int  # KV tokens one sequence may hold (prompt + generated)
    kv_capacity_tokens: int  # KV tokens all sequences may reserve together
    max_prefill_tokens: int = 512  # prompt tokens prefilled per step (the chunk budget)
    max_step_rows: int | None = None  # rows one decode step runs, prompt tokens included (None: no cap)


MIN_CHUNK_TOKENS = 32  # prompt tokens a step gives prefill even when the decode batch fills its rows


@dataclass(frozen=True)
class PrefillChunk:
    seq: Sequence
    start: int  # first prompt position of the chunk
    length: int

    @property
    def completes_prompt(self) -> bool:
        return self.start + self.length == len(self.seq.prompt_ids)


@dataclass
class Batch:
    """What one step runs: prompt chunks to prefill, and sequences to decode by one token."""

    prefill: list[PrefillChunk] = field(default_factory=list)
    decode: list[Sequence] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.prefill or self.decode)


class Scheduler:
    def __init__(self, config: SchedulerConfig):
        self.config = config
        self.waiting: deque[Sequence] = deque()
        self.prefilling: list[Sequence] = []
        self.running: list[Sequence] = []
        self.free_slots: list[int] = list(range(config.num_slots - 1, -1, -1))  # pop() gives 0 first
        self.reserved_tokens = 0  # sum of reservations of admitted sequences
        self.by_id: dict[str, Sequence] = {}

    # -- requests in and out ------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        """Queue `seq`; raise ValueError if it could never be admitted."""
        if seq.request_id in self.by_id:
            raise ValueError(f"request id {seq.request_id!r} is already in the engine")
        limit = min(self.config.max_seq_len, self.config.kv_capacity_tokens)
        if not seq.prompt_ids:
            raise ValueError("the prompt is empty: send at least one token")
        if len(seq.prompt_ids) >= limit:
            raise ValueError(
                f"the prompt has {len(seq.prompt_ids)} tokens but the engine holds at most {limit} "
                "per sequence: shorten it or raise max_seq_len"
            )
        seq.reserved_tokens = min(len(seq.prompt_ids) + max(1, seq.params.max_tokens), limit)
        seq.status = Status.WAITING
        self.waiting.append(seq)
        self.by_id[seq.request_id] = seq

    def cancel(self, request_id: str) -> Sequence | None:
        """Drop a request wherever it is; free its slot and reservation. None if unknown."""
        seq = self.by_id.get(request_id)
        if seq is None:
            return None
        self.finish(seq, "cancelled")
        return seq

    def finish(self, seq: Sequence, reason: str) -> None:
        """Mark `seq` finished and release everything it holds (idempotent)."""
        if seq.status is Status.FINISHED:
            return
        if seq.status is Status.WAITING:
            self.waiting.remove(seq)
        elif seq.status is Status.PREFILLING:
            self.prefilling.remove(seq)
        else:
            self.running.remove(seq)
        if seq.slot >= 0:
            self.free_slots.append(seq.slot)
            self.reserved_tokens -= seq.reserved_tokens
            seq.slot = -1
        seq.status = Status.FINISHED
        seq.finish_reason = reason
        del self.by_id[seq.request_id]

    # -- one step -------------------------------------------------------------------------------
    def schedule(self) -> Batch:
        self._admit()
        batch = Batch(decode=list(self.running))
        budget = self.config.max_prefill_tokens
        if self.running and self.config.max_step_rows:
            budget = min(budget, max(self.config.max_step_rows - len(self.running), MIN_CHUNK_TOKENS))
        for seq in self.prefilling:
            if budget <= 0:
                break
            length = min(budget, len(seq.prompt_ids) - seq.num_cached)
            batch.prefill.append(PrefillChunk(seq, seq.num_cached, length))
            budget -= length
        return batch

    def postprocess(self, batch: Batch, sampled: dict[str, int]) -> list[Sequence]:
        """Advance the cache counters, append sampled tokens, finish on stop token or length.

        `sampled` maps request ids to the token sampled for them this step (decode sequences and
        prefill chunks that completed their prompt). Returns the sequences that got a token.
        """
        touched: list[Sequence] = []
        for chunk in batch.prefill:
            seq = chunk.seq
            if seq.status is not Status.PREFILLING:
                continue  # cancelled meanwhile
            seq.num_cached += chunk.length
            if chunk.completes_prompt:
                self.prefilling.remove(seq)
                self.running.append(seq)
                seq.status = Status.RUNNING
                self._append(seq, sampled[seq.request_id], touched)
        for seq in batch.decode:
            if seq.status is not Status.RUNNING:
                continue
            seq.num_cached += 1
            self._append(seq, sampled[seq.request_id], touched)
        return touched

    def _append(self, seq: Sequence, token: int, touched: list[Sequence]) -> None:
        seq.output_ids.append(token)
        touched.append(seq)
        if token in seq.stop_ids:
            self.finish(seq, "stop")
        elif len(seq.output_ids) >= seq.max_new_tokens:
            self.finish(seq, "length")

    def _admit(self) -> None:
        capacity = self.config.kv_capacity_tokens
        while self.waiting and self.free_slots:
            head = self.waiting[0]
            if self.reserved_tokens + head.reserved_tokens > capacity:
                break  # FIFO: nobody overtakes the head, so it cannot starve
            self.waiting.popleft()
            head.slot = self.free_slots.pop()
            head.num_cached = 0
            self.reserved_tokens += head.reserved_tokens
            head.status = Status.PREFILLING
            self.prefilling.append(head)

    # -- reports ---------------------------------------------------------------------------------
    def has_work(self) -> bool:
        return bool(self.waiting or self.prefilling or self.running)

    def used_tokens(self) -> int:
        """KV tokens actually held in the cache now."""
        return sum(s.num_cached for s in self.prefilling) + sum(s.num_cached for s in self.running)
