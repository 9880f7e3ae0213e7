"""What the serving path costs the host per token, with the device taken out of the picture.

`dynasparse serve` runs its engine thread, an output thread (detokenization, metrics) and the
asyncio event loop (HTTP, SSE) in one process, so they share one interpreter lock: the Python work
they do per token bounds the tokens per second a worker can serve, whatever the GPU does. This
benchmark serves streamed completions from a `TokenPump` (an engine without a model whose every
step waits `step_ms` with the lock released, as a CUDA step's sync does, then gives each running
request one real token of the default tokenizer) through the real server, and reports served tok/s
against what the pump offers, TTFT and inter-token percentiles, and each stage's CPU microseconds
per token. Run: `python3 -m dynasparse_worker.benchmarks.host_cost --streams 16,64,128`.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from dynasparse_worker.engine.types import EngineStats, SamplingParams, TokenEvent


@dataclass
class _Request:
    request_id: str
    prompt_tokens: int
    max_tokens: int
    produced: int = 0


@dataclass
class TokenPump:
    """An engine-shaped token source: the `Engine` methods the server calls, no model."""

    tokenizer: Any
    slots: int
    step_s: float
    max_seq_len: int = 2048
    words: list[int] = field(default_factory=list)  # token ids cycled through (real text)
    _waiting: list[_Request] = field(default_factory=list)
    _running: dict[str, _Request] = field(default_factory=dict)
    _cancelled: list[str] = field(default_factory=list)
    _tokens: int = 0
    _steps: int = 0

    def __post_init__(self) -> None:
        self.config = SimpleNamespace(max_seq_len=self.max_seq_len)
        self.runner = SimpleNamespace(
            cache=SimpleNamespace(num_slots=self.slots, max_seq_len=self.max_seq_len),
            graphs={}, device=SimpleNamespace(type="pump"))
        if not self.words:
            text = " the quick brown fox jumps over the lazy dog and runs back home again"
            self.words = self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def stop_ids(self, params: SamplingParams) -> frozenset[int]:
        return frozenset(params.stop_token_ids)

    def add_request(self, request_id: str, prompt_token_ids: list[int],
                    params: SamplingParams | None = None) -> None:
        params = params or SamplingParams()
        self._waiting.append(_Request(request_id, len(prompt_token_ids), params.max_tokens))

    def cancel(self, request_id: str) -> bool:
        self._waiting = [r for r in self._waiting if r.request_id != request_id]
        if self._running.pop(request_id, None) is None:
            return False
        self._cancelled.append(request_id)
        return True

    def has_work(self) -> bool:
        return bool(self._waiting or self._running or self._cancelled)

    def step(self) -> list[TokenEvent]:
        while self._waiting and len(self._running) < self.slots:
            req = self._waiting.pop(0)
            self._running[req.request_id] = req
        time.sleep(self.step_s)  # the device's step: the lock is free meanwhile
        events = [TokenEvent(rid, [], "", True, "cancelled") for rid in self._cancelled]
        self._cancelled.clear()
        for req in list(self._running.values()):
            token = self.words[req.produced % len(self.words)]
            req.produced += 1
            done = req.produced >= req.max_tokens
            if done:
                del self._running[req.request_id]
            events.append(TokenEvent(req.request_id, [token], "", done, "length" if done else None,
                                     req.prompt_tokens, req.produced))
        self._tokens += len(events)
        self._steps += 1
        return events

    def stats(self) -> EngineStats:
        return EngineStats(queue_depth=len(self._waiting), running=len(self._running),
                           kv_usage=len(self._running) / self.slots,
                           kv_capacity_tokens=self.slots * self.max_seq_len,
                           tokens_generated_total=self._tokens, steps_total=self._steps)


def _serve_pump(tokenizer: Any, slots: int, step_s: float) -> tuple[Any, threading.Thread]:
    """The real worker runtime (HTTP, control, engine loop) around a `TokenPump`."""
    from dynasparse_worker.server import event_loop
    from dynasparse_worker.server.runtime import ServeSettings, WorkerRuntime

    class PumpRuntime(WorkerRuntime):
        def _build_engine(self):
            loaded = SimpleNamespace(tokenizer=tokenizer, name="pump", model=SimpleNamespace(
                config=SimpleNamespace(max_position_embeddings=2048, vocab_size=len(tokenizer))))
            return TokenPump(tokenizer, slots, step_s), loaded, None

    # the engine stage stays a thread: an engine process builds its engine from the settings
    # alone, and the pump is no model it could load
    runtime = PumpRuntime(ServeSettings(model="pump", port=0, device="cpu", max_queue=4 * slots,
                                        max_connections=4 * slots + 64, engine_process="off"))
    thread = threading.Thread(target=lambda: event_loop.run(runtime.run()), daemon=True)
    thread.start()
    if not runtime.loaded.wait(60):
        raise RuntimeError("the pump worker did not start within 60 s")
    return runtime, thread


def measure(streams: list[int], step_ms: float, seconds: float, prompt_len: int,
            gen_len: int, client_processes: int = 0) -> dict:
    """Serve each level of `streams` for `seconds`; returns the JSON document."""
    from transformers import AutoTokenizer

    from dynasparse_worker.benchmarks.stream_client import run_level, summarize
    from dynasparse_worker.models.loading import default_model_dir

    tokenizer = AutoTokenizer.from_pretrained(str(default_model_dir()))
    runtime, thread = _serve_pump(tokenizer, max(streams), step_ms / 1000)
    url = f"http://127.0.0.1:{runtime.http_port}"
    prompt = tokenizer("Tell me a story about a fox", add_special_tokens=False)["input_ids"]
    prompt = (prompt * (prompt_len // len(prompt) + 1))[:prompt_len]
    rows = []
    try:
        for level in streams:
            loop = runtime.engine_loop
            cpu0 = (loop.host_cpu.output_s, loop.host_cpu.event_loop_s)
            tokens0 = runtime.engine_loop.engine._tokens
            t0 = time.time()
            records = run_level(url, level, seconds, prompt, gen_len, client_processes)
            # The window opens when the clients began sending (starting their processes takes a
            # while on a busy host), not when they were asked to.
            t0 = min((r.sent for r in records), default=t0)
            warm = min(seconds * 0.25, 2.0)
            row = dict(streams=level, step_ms=step_ms, **summarize(records, t0 + warm, t0 + seconds))
            tokens = max(1, runtime.engine_loop.engine._tokens - tokens0)
            row.update(offered_tokens_per_s=level / (step_ms / 1000),
                       output_cpu_us_per_token=1e6 * (loop.host_cpu.output_s - cpu0[0]) / tokens,
                       event_loop_cpu_us_per_token=1e6 * (loop.host_cpu.event_loop_s - cpu0[1])
                       / tokens)
            row["ratio"] = row["served_tokens_per_s"] / row["offered_tokens_per_s"]
            rows.append(row)
            print(f"streams {level:4d}: served {row['served_tokens_per_s']:8.0f} tok/s of "
                  f"{row['offered_tokens_per_s']:8.0f} offered (ratio {row['ratio']:.2f}), "
                  f"ITL p50/p95 {row['inter_token_p50_ms'] or 0:.2f}/{row['inter_token_p95_ms'] or 0:.2f}"
                  f" ms, CPU per token: output {row['output_cpu_us_per_token']:.0f} us, event loop "
                  f"{row['event_loop_cpu_us_per_token']:.0f} us, errors {row['errors']}", flush=True)
    finally:
        runtime.shutdown_now()
        thread.join(10)
    return dict(step_ms=step_ms, seconds=seconds, prompt_len=prompt_len, gen_len=gen_len, rows=rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="16,64,128", help="concurrent streams per level")
    parser.add_argument("--step-ms", type=float, default=6.0, help="the pump's step time")
    parser.add_argument("--seconds", type=float, default=8.0, help="per level")
    parser.add_argument("--prompt-len", type=int, default=50)
    parser.add_argument("--gen-len", type=int, default=128)
    parser.add_argument("--client-processes", type=int, default=0,
                        help="processes the streams are spread over (0: one per 16 streams)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    result = measure([int(s) for s in args.streams.split(",")], args.step_ms, args.seconds,
                     args.prompt_len, args.gen_len, args.client_processes)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
