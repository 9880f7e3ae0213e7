"""`dynasparse bench`: argument parsing for the benchmarks of `dynasparse_worker.benchmarks`.

Plain: decode throughput of the engine vs Hugging Face `generate` and the HBM roofline
(`benchmarks.engine_bench`). `--budgets 1,0.75,0.5,floor` adds the gated engine per budget, its
speed-up, expected loss and budget-switch cost (`benchmarks.gated_bench`), and `--plot` then draws
the frontier. `--serve` measures what streamed clients get from `dynasparse serve`
(`benchmarks.serve_bench`). Called by the CLI (`dynasparse/cli.py`).
"""

from __future__ import annotations

import argparse
import json
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
    parser.add_argument("--engine-process", choices=("auto", "on", "off"), default="auto",
                        help="--serve: the server's --engine-process (the engine in a child "
                             "process, or on a thread of the HTTP process)")
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
    from dynasparse_worker.benchmarks import engine_bench

    model, tokenizer, name, loaded = engine_bench.load_for_bench(args.shape, args.model, device)
    result = engine_bench.bench(model, tokenizer, device, batch_sizes, args.prompt_len,
                                args.gen_len, 0 if args.no_hf else args.hf_gen_len, args.repeats)
    result.update(model=name, budgets_requested=budgets)
    if any(b < 1.0 for b in budgets) or "floor" in args.budgets:
        from dynasparse_worker.benchmarks.gated_bench import bench_gated

        result.update(bench_gated(model, tokenizer, loaded, device, batch_sizes, budgets, args,
                                  result["rows"], engine_bench.bench_engine))
    engine_bench.print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.plot:
        if result.get("frontier"):
            from dynasparse_worker.benchmarks.gated_bench import plot_frontier

            plot_frontier(result, args.plot)
        else:
            engine_bench.plot(result, args.plot)
    return 0


def _run_serve(args, device, budgets: list[float]) -> int:
    from dynasparse_worker.benchmarks import serve_bench
    from dynasparse_worker.errors import UserError

    levels = _numbers(args.levels, int, "levels")
    if min(levels) < 1 or args.seconds <= 0:
        raise UserError("--levels must be >= 1 and --seconds > 0, e.g. --levels 1,16 --seconds 10")
    spec = f"shape:{args.shape}" if args.shape else (args.model or "default")
    result = serve_bench.serve_bench(spec, device, levels, budgets, args.seconds,
                                     args.prompt_len, args.gen_len, args.engine_process)
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
