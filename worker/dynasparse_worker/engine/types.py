"""Plain data the engine exchanges with its callers (the HTTP server, the benchmark, the demo).

No torch here: these cross thread boundaries and are built from request JSON.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

INT64_MAX = (1 << 63) - 1


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop, for one request."""

    max_tokens: int = 256
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means no top-k cut
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    ignore_eos: bool = False

    def problems(self) -> list[str]:
        """What makes these parameters unusable by the sampler (empty: fine). Checked before a
        request joins a batch, so one bad request never fails the step it would share."""
        found = []
        if not (isinstance(self.max_tokens, int) and 1 <= self.max_tokens <= INT64_MAX):
            found.append(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            found.append(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if not (math.isfinite(self.top_p) and 0 < self.top_p <= 1):
            found.append(f"top_p must lie in (0, 1], got {self.top_p!r}")
        if not (isinstance(self.top_k, int) and 0 <= self.top_k <= INT64_MAX):
            found.append(f"top_k must be an integer in [0, 2**63), got {self.top_k!r}")
        if self.seed is not None and not (isinstance(self.seed, int)
                                          and -INT64_MAX - 1 <= self.seed <= INT64_MAX):
            found.append(f"seed must be a 64-bit signed integer, got {self.seed!r}")
        return found


def stop_ids_for(params: SamplingParams, eos_ids: frozenset[int]) -> frozenset[int]:
    """Token ids that end a request with these parameters: its own, and EOS unless ignored."""
    return frozenset(set(params.stop_token_ids) | (set() if params.ignore_eos else set(eos_ids)))


@dataclass
class TokenEvent:
    """What one engine step produced for one request: new tokens, and whether it finished."""

    request_id: str
    token_ids: list[int]
    text: str  # newly decoded text since the previous event (stop strings already cut)
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "cancelled" | "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class EngineStats:
    """A snapshot for reports and metrics."""

    queue_depth: int = 0  # admitted, waiting for prefill
    running: int = 0  # in the decode batch
    kv_usage: float = 0.0  # fraction of KV capacity in use
    kv_capacity_tokens: int = 0
    tokens_generated_total: int = 0
    steps_total: int = 0
    extra: dict[str, float] = field(default_factory=dict)
