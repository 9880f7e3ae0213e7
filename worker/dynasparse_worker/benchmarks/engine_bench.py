"""Decode throughput of the engine against Hugging Face `generate` and the HBM roofline.

Same weights, same run: for each batch size, the engine's decode tok/s and per-token latency, HF
`generate`'s (eager), and the roofline (decode weight bytes per step ÷ the device-to-device copy
bandwidth measured here, read + write). Random weights of a real model's shape
(`models.shapes`: speed does not depend on the values) or a real model. Runs on the CPU too.
`bench_engine` is the decode timing loop every benchmark here shares. Called by
`dynasparse bench` (`commands/bench.py`), `benchmarks.gated_bench` and `benchmarks.serve_bench`.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch

from dynasparse_worker.engine import Engine, EngineConfig
from dynasparse_worker.engine.plans import DENSE
from dynasparse_worker.engine.types import SamplingParams


def load_for_bench(shape: str | None, model: str | None, device: Any) -> tuple:
    """(model, tokenizer, name, LoadedModel or None): random weights of `shape`, else `model`
    (a spec `models.load_model` takes; None: the default model)."""
    if shape:
        from dynasparse_worker.models.shapes import random_model

        return random_model(shape, device), None, f"{shape} (random weights)", None
    from dynasparse_worker.models import load_model

    loaded = load_model(model or "default", device=device)
    return loaded.model, loaded.tokenizer, loaded.name, loaded


def engine_config(batch_sizes, prompt_len: int, gen_len: int, kv_fraction: float = 0.4):
    """The engine the benchmark builds: graphs only for the measured batch sizes (no rows kept
    for prompts riding along: the benchmark prefills before it times decode)."""
    seq = prompt_len + gen_len + 8
    return EngineConfig(max_batch_size=max(batch_sizes), max_seq_len=seq,
                        kv_memory_fraction=kv_fraction, kv_capacity_tokens=max(batch_sizes) * seq,
                        max_prefill_tokens=max(2048, prompt_len),
                        batch_buckets=tuple(sorted(set(batch_sizes))), ride_rows=0)


def bench(model, tokenizer, device, batch_sizes, prompt_len, gen_len, hf_gen_len,
          repeats: int = 1) -> dict:
    """Measure every row; returns the JSON document (see module docstring)."""
    config = engine_config(batch_sizes, prompt_len, gen_len)
    started = time.perf_counter()
    engine = Engine(model, tokenizer, config)
    startup_s = time.perf_counter() - started
    weight_bytes = engine.runner.model.weight_bytes_per_token()
    bandwidth = measure_copy_bandwidth(device)
    vocab = engine.runner.model.shape.vocab
    rows = []
    for batch in batch_sizes:
        if batch > engine.runner.cache.num_slots:
            continue
        runs = [bench_engine(engine, batch, prompt_len, gen_len, vocab) for _ in range(max(1, repeats))]
        tps, ms = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        rows.append(dict(engine="dynasparse", batch_size=batch, budget=1.0, tokens_per_s=tps,
                         ms_per_token=ms, gen_len=gen_len, graph_ms=graph_replay_ms(engine, batch)))
        if hf_gen_len:
            tps, ms = bench_hf(model, batch, prompt_len, min(hf_gen_len, gen_len), vocab, device)
            rows.append(dict(engine="hf", batch_size=batch, budget=1.0, tokens_per_s=tps,
                             ms_per_token=ms, gen_len=min(hf_gen_len, gen_len)))
    notes = []
    if hf_gen_len and hf_gen_len < gen_len:
        notes.append(f"HF generate ran {min(hf_gen_len, gen_len)} new tokens (engine: {gen_len}); "
                     "both rates are decode-only (prefill timed separately and subtracted)")
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "roofline_tokens_per_s": bandwidth / weight_bytes,
        "bandwidth_bytes_per_s": bandwidth, "weight_bytes_per_step": weight_bytes,
        "engine_startup_s": startup_s, "kv_slots": engine.runner.cache.num_slots,
        "cuda_graphs": len(engine.runner.graphs), "prompt_len": prompt_len, "gen_len": gen_len,
        "rows": rows, "notes": notes,
    }


def sync_device(device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_copy_bandwidth(device, nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting read + write (median of 10)."""
    if device.type == "cpu":
        nbytes = 1 << 27
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    times = []
    for _ in range(12):
        sync_device(device)
        start = time.perf_counter()
        dst.copy_(src)
        sync_device(device)
        times.append(time.perf_counter() - start)
    return 2 * nbytes / sorted(times[2:])[len(times[2:]) // 2]


def bench_engine(engine, batch: int, prompt_len: int, gen_len: int, vocab: int) -> tuple[float, float]:
    """Decode-only tok/s and ms per step for `batch` requests admitted together."""
    generator = torch.Generator().manual_seed(batch)
    device = engine.runner.device

    def submit(tag: str, n: int) -> None:
        for i in range(batch):
            prompt = torch.randint(0, vocab, (prompt_len,), generator=generator).tolist()
            engine.add_request(f"{tag}{i}", prompt, SamplingParams(max_tokens=n, ignore_eos=True))
        while engine.scheduler.waiting or engine.scheduler.prefilling:
            engine.step()  # prefill (and the first token) outside the timed region

    submit("warm", 4)
    while engine.has_work():
        engine.step()
    submit("run", gen_len)
    sync_device(device)
    start, steps = time.perf_counter(), 0
    while engine.has_work():
        engine.step()
        steps += 1
    sync_device(device)
    elapsed = time.perf_counter() - start
    return batch * (gen_len - 1) / elapsed, 1000 * elapsed / steps


def bench_hf(model, batch: int, prompt_len: int, gen_len: int, vocab: int, device) -> tuple[float, float]:
    """HF `generate` (greedy, eager): decode tok/s from the time difference of n and 1 new tokens."""
    generator = torch.Generator().manual_seed(batch)
    ids = torch.randint(0, vocab, (batch, prompt_len), generator=generator).to(device)
    mask = torch.ones_like(ids)

    def timed(n: int) -> float:
        sync_device(device)
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, pad_token_id=0)
        sync_device(device)
        return time.perf_counter() - start

    timed(2)  # warm-up
    decode_s = max(timed(gen_len) - timed(1), 1e-9)
    return batch * (gen_len - 1) / decode_s, 1000 * decode_s / (gen_len - 1)


def graph_replay_ms(engine, batch: int) -> float | None:
    """GPU time of one replay of the decode graph the active plan runs at `batch` (the dense
    engine: its one graph), alone: no scheduling, sampling or sync; the step's floor. None on
    the CPU."""
    runner = engine.runner
    if not runner.graphs:
        return None
    bucket = runner.graph_bucket(batch)
    plan, plan_bucket = runner.current_plan(), runner.plan_bucket(bucket)
    variant, width = ((plan.variants[plan_bucket], plan.width_sparsity[plan_bucket])
                      if plan is not None else (DENSE, 0.0))
    key = runner.graph_for(bucket, variant, width)
    if key is None:
        return None
    return replay_ms(runner.graphs[bucket, key][0])


def replay_ms(graph, repeats: int = 20) -> float:
    """Mean time of one CUDA graph replay (ms) over `repeats`, after one warm-up replay."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    graph.replay()
    start.record()
    for _ in range(repeats):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / repeats


def print_table(result: dict) -> None:
    print(f"{result['model']} on {result['device']}: roofline {result['roofline_tokens_per_s']:.0f} tok/s "
          f"at batch 1 ({result['weight_bytes_per_step'] / 1e9:.2f} GB/step at "
          f"{result['bandwidth_bytes_per_s'] / 1e9:.0f} GB/s)")
    print(f"{'engine':<16} {'batch':>5} {'budget':>6} {'tok/s':>10} {'ms/token':>9} {'graph ms':>9} "
          f"{'speed-up':>8} {'exp. loss':>9}")
    for row in result["rows"]:
        graph = f"{row['graph_ms']:.2f}" if row.get("graph_ms") is not None else "-"
        speedup = f"{row['speedup']:.2f}x" if "speedup" in row else "-"
        loss = f"{row['expected_loss']:.3f}" if "expected_loss" in row else "-"
        print(f"{row['engine']:<16} {row['batch_size']:>5} {row['budget']:>6.2f} "
              f"{row['tokens_per_s']:>10.1f} {row['ms_per_token']:>9.2f} {graph:>9} {speedup:>8} "
              f"{loss:>9}")
    for row in result.get("budget_switch", []):
        print(f"budget -> {row['budget']:.2f} (batch {row['batch_size']}): set_budget "
              f"{row['set_budget_ms']:.3f} ms, first step {row['first_step_ms']:.2f} ms (steady "
              f"{row['steady_step_ms']:.2f}), new plan used: {row['used_new_plan']}, captures "
              f"{row['captures_during']}, allocated bytes {row['allocated_bytes_during']}")
    for note in result["notes"]:
        print(f"note: {note}")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for engine in ("dynasparse", "hf"):
        rows = [r for r in result["rows"] if r["engine"] == engine and r["budget"] == 1.0]
        if rows:
            ax.plot([r["batch_size"] for r in rows], [r["tokens_per_s"] for r in rows], "o-",
                    label=engine)
    sizes = sorted({r["batch_size"] for r in result["rows"]})
    ax.plot(sizes, [s * result["roofline_tokens_per_s"] for s in sizes], "k--",
            label="weight-read roofline")
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="decode tok/s",
           title=f"{result['model']} on {result['device']}")
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
