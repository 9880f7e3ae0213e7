"""`dynasparse bench`: decode throughput of the engine vs Hugging Face `generate` and the HBM roofline.

Same weights, same run: for each batch size, the engine's decode tok/s and per-token latency, HF
`generate`'s (eager), and the roofline (decode weight bytes per step ÷ the device-to-device copy
bandwidth measured here, read + write). `--shape` builds random weights of a real model's shape
(speed does not depend on the values); `--model` loads a real one. Runs on the CPU too (CI smoke).

`--budgets 1,0.75,0.5,floor` adds the gated engine (issue 4): the model gets gates
(`gating.install_gates`) and a calibration (the cached one for `--model`; for `--shape`, a synthetic
plan from activation quantiles on random tokens, `engine.synthetic_plan`, and the JSON says so); then
per batch size and budget: tok/s, speed-up over the dense engine of the same run, gate overhead at
1.0, the expected quality loss the gated model reports, and the cost of a budget change
(`engine.budget_bench`). `--plot` then draws the frontier: speed-up against expected loss.
Called by the CLI (`dynasparse/cli.py`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dynasparse_worker.models.shapes import SHAPES

HELP = "Benchmark decode throughput: engine vs Hugging Face generate vs the HBM roofline."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", default=None, help="'default', a hub id, a directory or a .gguf")
    source.add_argument("--shape", choices=sorted(SHAPES), help="random weights of this shape")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="default: cuda when available")
    parser.add_argument("--batch-sizes", default="1,8,32,128", help="comma-separated")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--gen-len", type=int, default=128)
    parser.add_argument("--hf-gen-len", type=int, default=32,
                        help="new tokens for HF generate (it is slow; its decode rate is per token)")
    parser.add_argument("--no-hf", action="store_true", help="skip the Hugging Face rows")
    parser.add_argument("--budgets", default="1.0",
                        help="comma-separated budgets in (0, 1]; 'floor' = the sparsest calibrated")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per row (median)")
    parser.add_argument("--threads", type=int, default=0, help="CPU: torch threads (0: torch's default)")
    parser.add_argument("--floor", type=float, default=0.3,
                        help="--shape: sparsest level of the synthetic plan")
    parser.add_argument("--depth-share", type=_share, default=None,
                        help="--shape: share of a level's saved bytes taken by skipped halves "
                             "(default 'auto': per batch bucket, as the calibrated planner chose on "
                             "the default model: width only at batch 1, depth only from 8 up)")
    parser.add_argument("--serve", action="store_true",
                        help="benchmark `dynasparse serve` with streamed OpenAI requests at each "
                             "--levels count of concurrent streams and each budget, next to the "
                             "engine alone at the same batch (see benchmarks/serve_bench.py)")
    parser.add_argument("--levels", default="1,16,64,128",
                        help="--serve: concurrent streams per level, comma-separated")
    parser.add_argument("--seconds", type=float, default=20.0, help="--serve: seconds per level")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--plot", type=Path, default=None, help="draw tok/s per batch size (PNG)")


def _share(text: str) -> float | None:
    if text.strip().lower() == "auto":
        return None
    try:
        share = float(text)
    except ValueError:
        share = -1.0
    if not 0.0 <= share <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: pass 'auto' or a fraction in [0, 1], e.g. 0.5")
    return share


def _numbers(text: str, kind, name: str) -> list:
    from dynasparse_worker.errors import UserError

    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise UserError(f"--{name} takes comma-separated numbers, e.g. 1,8,32: got {text!r}")
    return values


def run(args: argparse.Namespace) -> int:
    import torch

    from dynasparse_worker.errors import UserError

    batch_sizes = _numbers(args.batch_sizes, int, "batch-sizes")
    budgets = _budgets(args.budgets, args.floor)
    if any(not 0 < b <= 1 for b in budgets if b != -1.0) or not 0 < args.floor <= 1:
        raise UserError("--budgets must lie in (0, 1], e.g. --budgets 1,0.75,0.5")
    if min(batch_sizes) < 1 or args.prompt_len < 1 or args.gen_len < 2:
        raise UserError("batch sizes and --prompt-len must be >= 1, --gen-len >= 2")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is visible: pass --device cpu")
    if args.serve:
        return _run_serve(args, device, budgets)
    model, tokenizer, name, loaded = _load(args, device)
    result = bench(model, tokenizer, device, batch_sizes, args.prompt_len, args.gen_len,
                   0 if args.no_hf else args.hf_gen_len, args.repeats)
    result.update(model=name, budgets_requested=budgets)
    if any(b < 1.0 for b in budgets) or "floor" in args.budgets:
        from dynasparse_worker.commands.bench_gated import bench_gated

        result.update(bench_gated(model, tokenizer, loaded, device, batch_sizes, budgets, args,
                                  result["rows"], bench_engine))
    _print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.plot:
        if result.get("frontier"):
            from dynasparse_worker.commands.bench_gated import plot_frontier

            plot_frontier(result, args.plot)
        else:
            _plot(result, args.plot)
    return 0


def _run_serve(args, device, budgets: list[float]) -> int:
    from dynasparse_worker.benchmarks import serve_bench
    from dynasparse_worker.errors import UserError

    levels = _numbers(args.levels, int, "levels")
    if min(levels) < 1 or args.seconds <= 0:
        raise UserError("--levels must be >= 1 and --seconds > 0, e.g. --levels 1,16 --seconds 10")
    spec = f"shape:{args.shape}" if args.shape else (args.model or "default")
    result = serve_bench.serve_bench(spec, device, levels, budgets, args.seconds,
                                     args.prompt_len, args.gen_len)
    serve_bench.print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.plot:
        serve_bench.plot(result, args.plot)
    return 0


def _budgets(text: str, floor: float) -> list[float]:
    """'1,0.75,floor' -> [1.0, 0.75, -1.0]: 'floor' (-1) is resolved once the plan is known."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    numbers = _numbers(",".join(p for p in parts if p != "floor") or "1", float, "budgets")
    return numbers + ([-1.0] if "floor" in parts else [])


def _load(args, device):
    import torch

    if args.shape:
        from dynasparse_worker.models.shapes import random_model

        return random_model(args.shape, device), None, f"{args.shape} (random weights)", None
    from dynasparse_worker.models import load_model

    loaded = load_model(args.model or "default", device=device)
    return loaded.model, loaded.tokenizer, loaded.name, loaded


def engine_config(batch_sizes, prompt_len: int, gen_len: int, kv_fraction: float = 0.4):
    """The engine the benchmark builds: graphs only for the measured batch sizes (no rows kept
    for prompts riding along: the benchmark prefills before it times decode)."""
    from dynasparse_worker.engine import EngineConfig

    seq = prompt_len + gen_len + 8
    return EngineConfig(max_batch_size=max(batch_sizes), max_seq_len=seq,
                        kv_memory_fraction=kv_fraction, kv_capacity_tokens=max(batch_sizes) * seq,
                        max_prefill_tokens=max(2048, prompt_len),
                        batch_buckets=tuple(sorted(set(batch_sizes))), ride_rows=0)


def bench(model, tokenizer, device, batch_sizes, prompt_len, gen_len, hf_gen_len,
          repeats: int = 1) -> dict:
    """Measure every row; returns the JSON document (see module docstring)."""
    import statistics

    import torch

    from dynasparse_worker.engine import Engine

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


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_copy_bandwidth(device, nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting read + write (median of 10)."""
    import torch

    if device.type == "cpu":
        nbytes = 1 << 27
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    times = []
    for _ in range(12):
        _sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        times.append(time.perf_counter() - start)
    return 2 * nbytes / sorted(times[2:])[len(times[2:]) // 2]


def bench_engine(engine, batch: int, prompt_len: int, gen_len: int, vocab: int) -> tuple[float, float]:
    """Decode-only tok/s and ms per step for `batch` requests admitted together."""
    import torch

    from dynasparse_worker.engine.types import SamplingParams

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
    _sync(device)
    start, steps = time.perf_counter(), 0
    while engine.has_work():
        engine.step()
        steps += 1
    _sync(device)
    elapsed = time.perf_counter() - start
    return batch * (gen_len - 1) / elapsed, 1000 * elapsed / steps


def graph_replay_ms(engine, batch: int) -> float | None:
    """GPU time of one decode graph replay alone (no scheduling, sampling or sync): the step's floor."""
    import bisect

    from dynasparse_worker.engine.budget_bench import replay_ms

    runner = engine.runner
    if not runner.graphs:
        return None
    bucket = runner.buckets[bisect.bisect_left(runner.buckets, batch)]
    graph = next(g for (b, _), (g, *_rest) in runner.graphs.items() if b == bucket)
    return replay_ms(graph)


def bench_hf(model, batch: int, prompt_len: int, gen_len: int, vocab: int, device) -> tuple[float, float]:
    """HF `generate` (greedy, eager): decode tok/s from the time difference of n and 1 new tokens."""
    import torch

    generator = torch.Generator().manual_seed(batch)
    ids = torch.randint(0, vocab, (batch, prompt_len), generator=generator).to(device)
    mask = torch.ones_like(ids)

    def timed(n: int) -> float:
        _sync(device)
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, pad_token_id=0)
        _sync(device)
        return time.perf_counter() - start

    timed(2)  # warm-up
    decode_s = max(timed(gen_len) - timed(1), 1e-9)
    return batch * (gen_len - 1) / decode_s, 1000 * decode_s / (gen_len - 1)


def _print_table(result: dict) -> None:
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


def _plot(result: dict, path: Path) -> None:
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
