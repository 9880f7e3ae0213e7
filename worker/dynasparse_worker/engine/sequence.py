"""Per-request state the scheduler and the engine share: tokens, KV slot, progress, stop bookkeeping.

Pure Python (no torch), so the scheduler stays testable without a device. Built by
`Engine.add_request`, moved between queues by `Scheduler`, read by `ModelRunner` (tokens, slot,
positions) and updated by `Engine` after each step (new tokens, text, finish).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from dynasparse_worker.engine.types import SamplingParams


class Status(enum.Enum):
    WAITING = "waiting"  # queued, holds nothing
    PREFILLING = "prefilling"  # holds a KV slot, prompt not yet fully in the cache
    RUNNING = "running"  # in the decode batch
    FINISHED = "finished"  # released everything


@dataclass
class Sequence:
    """One request's state. `num_cached` counts tokens whose K/V are in the cache."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    seed: int = 0  # per-request sampling seed (params.seed, or drawn at admission)
    stop_ids: frozenset[int] = frozenset()  # params.stop_token_ids, plus EOS unless ignore_eos
    output_ids: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    slot: int = -1  # KV slot index while admitted
    reserved_tokens: int = 0  # KV tokens reserved at admission (prompt + allowed new tokens)
    num_cached: int = 0
    finish_reason: str | None = None
    text: Any = None  # detokenizer.TextState when the engine detokenizes inline

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def max_new_tokens(self) -> int:
        """New tokens this request may still produce within its reservation."""
        return self.reserved_tokens - len(self.prompt_ids)

    def token_at(self, index: int) -> int:
        n_prompt = len(self.prompt_ids)
        return self.prompt_ids[index] if index < n_prompt else self.output_ids[index - n_prompt]

    @property
    def last_token(self) -> int:
        return self.output_ids[-1] if self.output_ids else self.prompt_ids[-1]
