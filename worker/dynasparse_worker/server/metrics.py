"""Prometheus metrics of one worker, in a dedicated `CollectorRegistry` (no module-global state).

`WorkerMetrics` is created by server/app.py; the engine loop observes latencies and token counts,
the app counts requests by status, and `refresh(snapshot)` copies the supervisor's gauges right
before each scrape of `GET /metrics`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

from dynasparse_worker.control.supervisor import Snapshot

CONTENT_TYPE = CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.ttft = Histogram("dynasparse_time_to_first_token_seconds",
                              "Time from admission to the first generated token.",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.inter_token = Histogram("dynasparse_inter_token_seconds",
                                     "Time between consecutive generated tokens of a request.",
                                     buckets=_TOKEN_BUCKETS, registry=r)
        self.e2e = Histogram("dynasparse_request_seconds", "Admission to last token.",
                             buckets=_LATENCY_BUCKETS, registry=r)
        self.budget = Gauge("dynasparse_budget", "Applied compute budget, (0, 1].", registry=r)
        self.expected_loss = Gauge("dynasparse_expected_quality_loss",
                                   "Expected quality loss (KL to dense per token) at the budget.",
                                   registry=r)
        self.floor = Gauge("dynasparse_budget_floor", "The operator's quality floor.", registry=r)
        self.ceiling = Gauge("dynasparse_budget_ceiling", "The operator's ceiling.", registry=r)
        self.queue_depth = Gauge("dynasparse_queue_depth", "Requests waiting for prefill.",
                                 registry=r)
        self.running = Gauge("dynasparse_running_sequences", "Sequences in the decode batch.",
                             registry=r)
        self.kv_usage = Gauge("dynasparse_kv_usage_ratio", "Fraction of the KV cache in use.",
                              registry=r)
        self.memory_used = Gauge("dynasparse_gpu_memory_used_bytes",
                                 "Accelerator memory in use (see the source label).",
                                 ["source"], registry=r)
        self.memory_total = Gauge("dynasparse_gpu_memory_total_bytes", "Accelerator memory size.",
                                  ["source"], registry=r)
        self.ready = Gauge("dynasparse_ready", "1 while the worker admits requests.", registry=r)
        self.prompt_tokens = Counter("dynasparse_prompt_tokens", "Prompt tokens processed.",
                                     registry=r)
        self.generated_tokens = Counter("dynasparse_generation_tokens", "Tokens generated.",
                                        registry=r)
        self.requests = Counter("dynasparse_requests", "Finished HTTP inference requests.",
                                ["endpoint", "status"], registry=r)
        self.decisions = Counter("dynasparse_budget_decisions", "Budget changes by source.",
                                 ["source"], registry=r)

    def refresh(self, s: Snapshot) -> None:
        self.budget.set(s.applied_budget)
        self.expected_loss.set(s.expected_loss)
        self.floor.set(s.control.floor)
        self.ceiling.set(s.control.ceiling)
        self.queue_depth.set(s.queue_depth)
        self.running.set(s.running)
        self.kv_usage.set(s.kv_usage)
        self.memory_used.labels(s.memory.source).set(s.memory.used_bytes)
        self.memory_total.labels(s.memory.source).set(s.memory.total_bytes)
        self.ready.set(1 if s.ready else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
