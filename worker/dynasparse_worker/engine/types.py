"""Plain data the engine exchanges with its callers (the HTTP server, the benchmark, the demo).

No torch here: these cross thread boundaries and are built from request JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
