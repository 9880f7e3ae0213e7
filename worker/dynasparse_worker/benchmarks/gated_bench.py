"""The `--budgets` part of `dynasparse bench`: the gated engine beside the dense one, and the frontier.

Called by `commands/bench.py` after the dense rows of `engine_bench.bench` (the dense engine and HF
must run before the gates go in). Gates the same HF model, calibrates it (cached artifact for
`--model`, a synthetic plan for `--shape`), builds the gated engine, and returns the JSON additions:
gated rows (the dense rows' keys plus `speedup`, `expected_loss`, `gate_overhead` at 1.0),
`budget_switch`, `frontier`, `calibration`. `plot_frontier` draws speed-up against expected loss, one line per batch size.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from dynasparse_worker.benchmarks.budget_bench import DecodeTimer, budget_rows, switch_costs
from dynasparse_worker.benchmarks.engine_bench import engine_config
from dynasparse_worker.engine import Engine
from dynasparse_worker.gating import install_gates
from dynasparse_worker.gating.synthetic_plan import bucket_depth_share, synthetic_table


def bench_gated(model: Any, tokenizer: Any, loaded: Any, device: Any, batch_sizes: list[int],
                budgets: list[float], args: Any, dense_rows: list[dict], timer: DecodeTimer) -> dict:
    gated = install_gates(model)
    started = time.perf_counter()
    calibration = _calibrate(gated, loaded, device, budgets, args)
    floor = gated.floor
    budgets = sorted({round(floor if b == -1.0 else max(b, floor), 6) for b in budgets} | {1.0},
                     reverse=True)
    calibration["seconds"] = time.perf_counter() - started
    config = engine_config(batch_sizes, args.prompt_len, args.gen_len, kv_fraction=0.3)
    started = time.perf_counter()
    engine = Engine(gated, tokenizer, config)
    startup = time.perf_counter() - started
    dense_rates = {r["batch_size"]: r["tokens_per_s"] for r in dense_rows if r["engine"] == "dynasparse"}
    rows = budget_rows(engine, dense_rates, batch_sizes, budgets, args.prompt_len, args.gen_len,
                       timer, args.repeats)
    switch = []
    for batch in batch_sizes:
        switch += switch_costs(engine, batch, budgets[1:] + [1.0])
    frontier = [dict(batch_size=r["batch_size"], budget=r["budget"], speedup=r["speedup"],
                     expected_loss=r["expected_loss"]) for r in rows]
    captures, graphs = engine.runner.captures, len(engine.runner.graphs)
    speed = engine.speed.report() if engine.speed is not None else None
    del engine
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return dict(rows=dense_rows + rows, budgets=budgets, calibration=calibration,
                gated_engine_startup_s=startup, budget_switch=switch, frontier=frontier,
                gated_graph_captures=captures, gated_cuda_graphs=graphs, speed_table=speed)


def _calibrate(gated: Any, loaded: Any, device: Any, budgets: list[float], args: Any) -> dict:
    """Attach a plan table to `gated`; describe where it came from (goes into the JSON)."""
    if loaded is None:  # --shape: random weights
        levels = [args.floor if b == -1.0 else b for b in budgets] + [args.floor]
        vocab = gated.model.config.vocab_size
        synthetic_table(gated, gated.half_bytes(), levels, vocab, device, args.depth_share)
        if args.depth_share is None:
            share = {str(e): bucket_depth_share(e) for e in gated.state.bucket_edges}
            how_much = "a per-bucket share (as the calibrated planner chose on the default model)"
        else:
            share, how_much = args.depth_share, f"{args.depth_share:.0%}"
        return dict(kind="synthetic", levels=sorted(set(levels), reverse=True),
                    depth_share=share,
                    how="random weights: width thresholds are |x| quantiles per (layer, group) from "
                        "2 random-token forward passes of 64 tokens; depth skips whole attention/MLP "
                        f"halves from layer L-2 down for {how_much} of each level's saved "
                        "bytes; expected_loss = KL(dense||sparse) per token measured on random "
                        "tokens (not a quality number)")
    from dynasparse_worker.gating.artifact import calibration_for

    calibration = calibration_for(loaded, gated)
    return dict(kind="calibrated", model=calibration.model_name, floor=gated.floor,
                settings=str(calibration.settings))


def plot_frontier(result: dict, path: Path) -> None:
    """Speed-up over the dense engine against the expected loss, one line per batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for batch in sorted({p["batch_size"] for p in result["frontier"]}):
        points = sorted((p for p in result["frontier"] if p["batch_size"] == batch),
                        key=lambda p: p["expected_loss"])
        ax.plot([p["expected_loss"] for p in points], [p["speedup"] for p in points], "o-",
                label=f"batch {batch}")
        for p in points:
            ax.annotate(f"{p['budget']:.2f}", (p["expected_loss"], p["speedup"]), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
    ax.axhline(1.0, color="k", lw=0.5)
    kind = result.get("calibration", {}).get("kind", "")
    ax.set(xlabel="expected loss (KL dense‖sparse per token" + (", synthetic plan)" if kind ==
                                                                  "synthetic" else ")"),
           ylabel="decode speed-up over the dense engine",
           title=f"{result['model']} on {result['device']}: budget frontier")
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
