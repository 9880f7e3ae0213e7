"""GPU check and benchmark of the input-sparse kernels (issue 4), run on the device machine.

    PYTHONPATH=worker:proto:operator:. python3 scripts/gpu/kernels_suite.py

1. correctness on CUDA of every kernel variant (predicated with in-kernel or two-kernel split-K
   reduction; compacting with FMA or tl.dot, one or two launches) against the float64 masked
   reference (fresh random inputs per check, poisoned outputs, repeated launches to catch races
   in the split-K fix-up, a threshold changed in place between CUDA-graph replays);
2. per Llama-3-8B projection group (q|k|v 4096->6144, o 4096->4096, gate|up 4096->2x14336 with
   the SiLU epilogue, down 14336->4096), bf16, batch 1/2/4/8/16: a tile/split sweep of the
   compacting kernel at 50 %, its all-skipped floor, then dense cuBLAS vs sparse at 0-80 % union
   sparsity (batch 1 also times the predicated kernel and the two-launch form), as CUDA-graph
   replays over rotating weight copies (so L2 does not serve them), do_bench medians; ~90 s;
3. writes $OUT/kernels.json (rows, tuned configs, crossover per batch) and prints a table last.

`--dry-run` runs the same code on the CPU under TRITON_INTERPRET=1 with tiny shapes and a host
timer (its numbers mean nothing): a check of the script itself before spending device time.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field

if "--dry-run" in sys.argv:  # must precede the first import of the Triton kernels
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402
import triton  # noqa: E402

from dynasparse_worker.kernels import (  # noqa: E402
    SplitKWorkspace,
    dense_matmul,
    linear,
    masked_reference,
    pack_projection,
)
from dynasparse_worker.kernels.configs import KernelConfig, pick_config  # noqa: E402
from dynasparse_worker.kernels.triton_sparse import sparse_matmul_triton  # noqa: E402

THRESHOLD = 0.75


@dataclass(frozen=True)
class Plan:
    """What one run covers."""

    dev: str = "cuda"
    shapes: dict = field(default_factory=lambda: {
        "qkv": (4096, [4096, 1024, 1024], False), "o": (4096, [4096], False),
        "gate_up": (4096, [14336, 14336], True), "down": (14336, [4096], False)})
    """group -> (in, fused outputs, gated): the Llama-3-8B projection groups."""
    batches: tuple = (1, 2, 4, 8, 16)
    sparsities: tuple = (0.0, 0.25, 0.40, 0.50, 0.65, 0.80)
    cases: tuple = ((3, 300, [136, 40], False), (1, 4096, [4096, 4096], True),
                    (4, 4096, [4096, 1024, 1024], False), (1, 14336, [4096], False),
                    (70, 1024, [512], False))
    """Correctness cases (rows, in, fused outputs, gated)."""
    graphs: bool = True
    """Time CUDA-graph replays with do_bench; False: a host timer (the CPU dry run)."""
    workspace: dict = field(default_factory=lambda: dict(
        max_batch=70, max_out=2 * 14336, max_split=64, max_in=2 * 14336))
    budget_s: float = 185.0
    """Seconds after which the sweeps shorten and further batches are skipped."""


DRY_RUN = Plan(dev="cpu", shapes={"qkv": (64, [32, 16, 16], False), "gate_up": (64, [32, 32], True)},
               batches=(1, 3), sparsities=(0.0, 0.5),
               cases=((1, 48, [32], False), (3, 64, [32, 32], True)), graphs=False,
               workspace=dict(max_batch=4, max_out=128, max_split=64, max_in=128))
T0 = time.time()
LOG: list[str] = []


def log(msg: str) -> None:
    print(msg, flush=True)
    LOG.append(msg)


def make_x(rows: int, k: int, sparsity: float, gen: torch.Generator) -> torch.Tensor:
    dev = gen.device
    """Tokens whose |x| is below THRESHOLD exactly on a shared random `sparsity` share of channels."""
    skip = torch.randperm(k, generator=gen, device=dev)[: int(round(sparsity * k))]  # [S]
    mag = 1.0 + torch.rand((rows, k), generator=gen, device=dev)  # [B, K] in [1, 2)
    mag[:, skip] = 0.7 * torch.rand((rows, skip.numel()), generator=gen, device=dev)
    sign = torch.randint(0, 2, (rows, k), generator=gen, device=dev) * 2 - 1
    return (mag * sign).to(torch.bfloat16)


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref).norm() / ref.norm().clamp_min(1e-30))


def check_correctness(plan: Plan, ws: SplitKWorkspace, gen: torch.Generator) -> list[dict]:
    results = []
    dev = plan.dev
    for rows, k, outs, gated in plan.cases:
        for fixup in (True, False, "compact", "compact-dot", "two-launch"):
            for with_scale in (True,):
                ws_ = [torch.randn(n, k, device=dev, generator=gen).to(torch.bfloat16) / math.sqrt(k)
                       for n in outs]
                pw = pack_projection(ws_, gated=gated, workspace=ws)
                scale = (0.5 + torch.rand(k, device=dev, generator=gen)) if with_scale else None
                thr = torch.full((), 0.8, device=dev)
                errs = []
                try:
                    for _ in range(5):  # fresh x per check, repeated launches catch split-K races
                        x = torch.randn(rows, k, device=dev, generator=gen).to(torch.bfloat16)
                        out = torch.full((rows, pw.out_features), float("nan"), device=dev,
                                         dtype=torch.bfloat16)
                        cfg = pick_config(rows, k, pw.out_features, gated)
                        if isinstance(fixup, str):
                            cfg = KernelConfig(128, 64, 4, compact=True, dot=fixup == "compact-dot",
                                               fused=fixup != "two-launch")
                        else:
                            cfg = KernelConfig(128, 64, 4)
                        sparse_matmul_triton(x, pw, thr, scale, out=out, config=cfg,
                                             fixup=fixup is not False)
                        errs.append(rel_err(out, masked_reference(x, pw, thr, scale)))
                except Exception as exc:  # a compile error must not cost the whole run
                    log(f"ERROR rows={rows} k={k} {type(exc).__name__}: {str(exc)[:300]}")
                    errs.append(float("inf"))
                ok = max(errs) < 1.5e-2 and int(ws.counters.abs().sum()) == 0
                results.append(dict(rows=rows, k=k, outs=outs, gated=gated, fixup=fixup,
                                    scale=with_scale, max_rel_err=max(errs), ok=ok))
                if not ok:
                    log(f"FAIL correctness {results[-1]}")
    # a threshold changed in place between replays of one captured graph takes effect
    n, k = (1024, 2048) if plan.graphs else (32, 64)
    pw = pack_projection([torch.randn(n, k, device=dev).to(torch.bfloat16)], workspace=ws)
    x = torch.randn(1, k, device=dev).to(torch.bfloat16)
    thresholds = torch.zeros(4, device=dev)  # stands in for SparsityState.thresholds
    out = torch.empty(1, n, device=dev, dtype=torch.bfloat16)
    step = lambda: sparse_matmul_triton(x, pw, thresholds[2], out=out)  # noqa: E731
    replay = _capture([step]).replay if plan.graphs else step
    errs = []
    for value in (0.0, 0.5, 1.2, 0.1):
        thresholds[2].fill_(value)
        replay()
        if plan.graphs:
            torch.cuda.synchronize()
        errs.append(rel_err(out, masked_reference(x, pw, thresholds[2])))
    results.append(dict(case="threshold updated in place between graph replays",
                        max_rel_err=max(errs), ok=max(errs) < 1.5e-2))
    return results


def _capture(fns) -> torch.cuda.CUDAGraph:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for f in fns:
            f()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for f in fns:
            f()
    torch.cuda.synchronize()
    return graph


def time_per_call(fns, plan: Plan) -> float:
    """Median microseconds per call of a graph that runs `fns` back to back."""
    if not plan.graphs:  # dry run: a host timer, numbers meaningless
        ts = []
        for _ in range(2):
            t0 = time.perf_counter()
            for f in fns:
                f()
            ts.append(time.perf_counter() - t0)
        return 1e6 * min(ts) / len(fns)
    graph = _capture(fns)
    ms = triton.testing.do_bench(graph.replay, warmup=5, rep=25, return_mode="median")
    return 1000.0 * ms / len(fns)


def candidates(rows: int, k: int, n: int, gated: bool) -> list[KernelConfig]:
    """Compacting configs swept at 50 %: (block_n, block_k, warps, dot, stages, waves)."""
    if rows == 1:
        tiles = [(128, 64, 4, True, 3, 2), (128, 128, 8, True, 3, 2), (128, 64, 8, False, 2, 2),
                 (64, 64, 4, True, 3, 2), (64, 64, 4, True, 4, 1), (64, 128, 4, True, 3, 1),
                 (64, 64, 4, False, 2, 2)]
    else:  # batches: the swap-AB tl.dot path only
        tiles = [(128, 64, 4, True, 3, 2), (128, 128, 8, True, 3, 2), (64, 64, 4, True, 3, 2),
                 (64, 128, 4, True, 3, 1), (256, 64, 8, True, 3, 2)]
    out = []
    for bn, bk, warps, dot, stages, waves in tiles:
        blocks = -(-n // bn)
        split = max(1, min(32, round(waves * 132 / blocks), k // (2 * bk)))
        cfg = KernelConfig(block_n=bn, block_k=bk, split_k=split, num_warps=warps,
                           num_stages=stages, compact=True, dot=dot)
        if cfg not in out:
            out.append(cfg)
    return out


def _sweep(plan, cfgs, x, pws, thr, outs_buf) -> tuple[float, KernelConfig | None, list]:
    best, sweep = (float("inf"), None), []
    for cfg in cfgs:
        if time.time() - T0 > plan.budget_s * 0.7 and best[1] is not None:
            break  # keep the run inside its lease: fewer configs swept
        try:
            t = time_per_call([lambda p=p, c=cfg: sparse_matmul_triton(
                x, p, thr, out=outs_buf, config=c) for p in pws], plan)
        except Exception as exc:  # an unbuildable tile: note it, keep sweeping
            log(f"config {cfg} failed: {type(exc).__name__}: {str(exc)[:160]}")
            continue
        sweep.append(dict(config=cfg.__dict__, us=t))
        best = min(best, (t, cfg), key=lambda b: b[0])
    return best[0], best[1], sweep


def bench_group(plan: Plan, name: str, ws: SplitKWorkspace, gen: torch.Generator,
                rows_out: list) -> dict:
    dev = plan.dev
    k, outs, gated = plan.shapes[name]
    w_nk = [torch.randn(n, k, device=dev, generator=gen).to(torch.bfloat16) / math.sqrt(k)
            for n in outs]
    pw0 = pack_projection(w_nk, gated=gated, workspace=ws)
    n_total = pw0.w_t.shape[1]
    bytes_w = pw0.w_t.numel() * 2
    copies = max(2, math.ceil(3 * 60e6 / bytes_w)) if plan.graphs else 2  # L2 (60 MB) misses
    pws = [pw0] + [pack_projection([w.clone() for w in w_nk], gated=gated, workspace=ws)
                   for _ in range(copies - 1)]
    del w_nk
    w_lin = [p.w_t.t().contiguous() for p in pws]  # nn.Linear layout: cuBLAS's usual operand
    thr = torch.full((), THRESHOLD, device=dev)
    tuned: dict = {}
    dot_cfg = None  # the last batch's winner, used when time runs short
    for rows in plan.batches:
        if time.time() - T0 > plan.budget_s:
            log(f"time limit: skipping {name} B={rows}")
            break
        outs_buf = torch.empty(rows, pw0.out_features, device=dev, dtype=torch.bfloat16)
        dense_buf = torch.empty(rows, n_total, device=dev, dtype=torch.bfloat16)
        x50 = make_x(rows, k, 0.5, gen)
        entry: dict = {}
        if time.time() - T0 < plan.budget_s * 0.7 or dot_cfg is None:  # sweep every batch
            t_best, cfg, sweep = _sweep(plan, candidates(rows, k, pw0.out_features, gated),
                                        x50, pws, thr, outs_buf)
            cfg = cfg or pick_config(rows, k, pw0.out_features, gated)
            entry.update(us_best=t_best, sweep=sweep)
            if rows > 1:
                dot_cfg = cfg
        else:  # short of time: the last batch's winner
            cfg = dot_cfg
        call = lambda xx, c: [lambda p=p: sparse_matmul_triton(  # noqa: E731
            xx, p, thr, out=outs_buf, config=c) for p in pws]
        x_none = make_x(rows, k, 1.0, gen)  # every channel skipped: the kernel's fixed cost
        entry.update(config=cfg.__dict__, us_all_skipped=time_per_call(call(x_none, cfg), plan))
        if rows == 1:  # the two-launch form, and the predicated kernel, for comparison
            two = KernelConfig(**{**cfg.__dict__, "fused": False})
            pred = pick_config(1, k, pw0.out_features, gated, predicated=True)
            entry.update(us_two_launch=time_per_call(call(x50, two), plan),
                         predicated_config=pred.__dict__)
        dense_us = time_per_call([lambda p=p: torch.mm(x50, p.w_t, out=dense_buf) for p in pws], plan)
        dense_lin = time_per_call([lambda w=w: torch.mm(x50, w.t(), out=dense_buf) for w in w_lin], plan)
        fused_us = time_per_call([lambda p=p: linear(x50, p, thr, mode="dense") for p in pws], plan)
        entry.update(dense_mm_us=dense_us, dense_linear_layout_us=dense_lin,
                     dense_fused_mask_us=fused_us)  # the dense path with its one-launch mask
        dense_us = min(dense_us, dense_lin)
        tuned[rows] = entry
        for s in plan.sparsities:
            x = make_x(rows, k, s, gen)
            sp_us = time_per_call(call(x, cfg), plan)
            pred_us = time_per_call(call(x, pred), plan) if rows == 1 else None
            kept = int((x.float().abs() > THRESHOLD).any(0).sum())
            read = kept * n_total * 2 + x.numel() * 2 + outs_buf.numel() * 2
            rows_out.append(dict(group=name, batch=rows, sparsity=s, union_kept=kept / k,
                                 dense_us=dense_us, sparse_us=sp_us, speedup=dense_us / sp_us,
                                 predicated_us=pred_us, sparse_gbps=read / sp_us / 1e3,
                                 dense_gbps=(bytes_w + x.numel() * 2) / dense_us / 1e3))
    del pws, w_lin
    if plan.graphs:
        torch.cuda.empty_cache()
    return dict(k=k, outs=outs, gated=gated, copies=copies, tuned=tuned)


def copy_bandwidth() -> float:
    a = torch.empty(2 * 1024**3, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    ms = triton.testing.do_bench(lambda: b.copy_(a), warmup=5, rep=30, return_mode="median")
    return 2 * a.numel() / ms / 1e6  # GB/s, bytes read + written


def layer_summary(plan: Plan, rows: list[dict]) -> list[dict]:
    out = []
    for b in plan.batches:
        for s in plan.sparsities:
            sel = [r for r in rows if r["batch"] == b and r["sparsity"] == s]
            if len(sel) == len(plan.shapes):
                d = sum(r["dense_us"] for r in sel)
                sp = sum(r["sparse_us"] for r in sel)
                best = sum(min(r["dense_us"], r["sparse_us"]) for r in sel)
                out.append(dict(batch=b, sparsity=s, dense_us=d, sparse_us=sp, speedup=d / sp,
                                speedup_best_of_both=d / best))
    return out


def crossover(plan: Plan, summary: list[dict]) -> dict[int, float]:
    """Per batch: the union sparsity where the per-layer speed-up crosses 1 (1.01 = never)."""
    table = {}
    for b in plan.batches:
        pts = [(r["sparsity"], r["speedup"]) for r in summary if r["batch"] == b]
        table[b] = 1.01
        for (s0, v0), (s1, v1) in zip([(-1.0, 0.0)] + pts, pts):
            if v1 >= 1.0:
                table[b] = s1 if s0 < 0 or v0 >= 1.0 else s0 + (1.0 - v0) / (v1 - v0) * (s1 - s0)
                break
    return table


def main() -> None:
    plan = DRY_RUN if "--dry-run" in sys.argv else Plan()
    out_dir = os.environ.get("OUT") or tempfile.gettempdir()  # never the working tree
    gen = torch.Generator(device=plan.dev).manual_seed(1234)
    device = torch.cuda.get_device_name() if plan.graphs else "cpu (dry run, interpreter)"
    log(f"{device} torch {torch.__version__} triton {triton.__version__}")
    report: dict = dict(device=device, torch=torch.__version__,
                        triton=triton.__version__, threshold=THRESHOLD)
    if plan.graphs:
        report["copy_gbps"] = copy_bandwidth()
        log(f"copy bandwidth {report['copy_gbps']:.0f} GB/s")
    ws = SplitKWorkspace.allocate(plan.dev, **plan.workspace)
    report["correctness"] = check_correctness(plan, ws, gen)
    n_ok = sum(c["ok"] for c in report["correctness"])
    log(f"correctness: {n_ok}/{len(report['correctness'])} ok ({time.time() - T0:.0f}s)")
    rows: list[dict] = []
    report["groups"] = {}
    for name in plan.shapes:
        report["groups"][name] = bench_group(plan, name, ws, gen, rows)
        log(f"{name} done ({time.time() - T0:.0f}s)")
        with open(os.path.join(out_dir, "kernels.json"), "w") as fh:
            json.dump(dict(report, rows=rows, log=LOG), fh, indent=1)
    report["rows"] = rows
    report["layer"] = layer_summary(plan, rows)
    report["crossover"] = crossover(plan, report["layer"])
    report["log"] = LOG
    with open(os.path.join(out_dir, "kernels.json"), "w") as fh:
        json.dump(report, fh, indent=1)
    for name, g in report["groups"].items():
        for b, t in g["tuned"].items():
            c = t["config"]
            print(f"tuned {name:7s} B={b:2d} bn={c['block_n']} bk={c['block_k']} split={c['split_k']}"
                  f" w={c['num_warps']} dot={int(c['dot'])} best {t.get('us_best', 0):.1f}us"
                  f" two-launch {t.get('us_two_launch', 0):.1f}us"
                  f" all-skipped {t['us_all_skipped']:.1f}us mm {t['dense_mm_us']:.1f}us"
                  f" linear {t['dense_linear_layout_us']:.1f}us"
                  f" fused-mask-dense {t['dense_fused_mask_us']:.1f}us")
    print(f"{'group':8s}{'B':>3s}{'sp%':>5s}{'kept':>5s}{'dense_us':>9s}{'sparse_us':>10s}"
          f"{'GB/s':>6s}{'x':>6s}{'pred_us':>8s}")
    for r in rows:
        pred = f"{r['predicated_us']:8.1f}" if r["predicated_us"] else ""
        print(f"{r['group']:8s}{r['batch']:3d}{100 * r['sparsity']:5.0f}{r['union_kept']:5.2f}"
              f"{r['dense_us']:9.1f}{r['sparse_us']:10.1f}{r['sparse_gbps']:6.0f}"
              f"{r['speedup']:6.2f}{pred}")
    print("per layer (4 groups):  B sp%  dense_us sparse_us  speedup  best-of-both")
    for r in report["layer"]:
        print(f"  {r['batch']:3d} {100 * r['sparsity']:4.0f} {r['dense_us']:9.1f} {r['sparse_us']:9.1f}"
              f" {r['speedup']:7.2f} {r['speedup_best_of_both']:7.2f}")
    print("crossover (union sparsity from which sparse wins):", report["crossover"])
    print(f"correctness {n_ok}/{len(report['correctness'])} ok; total {time.time() - T0:.0f}s")


if __name__ == "__main__":
    main()
