"""GPU check and micro-benchmark of the listed kernel (v4) against the compacting one (v3) and cuBLAS.

    PYTHONPATH=worker:proto:operator:. python3 scripts/gpu/kernels_v4.py   # ~2-3 min on the H200

1. correctness on CUDA of v4 (one token and a batch; column blocks only and atomic splits; gated
   and not) against the float64 masked reference, fresh inputs, poisoned outputs, repeated calls;
2. per Llama-3-8B projection group (q|k|v, o, gate|up with SiLU·up, down), bf16, batch 1 and 32:
   a small v4 tile sweep at 50 % union sparsity, then cuBLAS, v3 (`pick_config`) and v4 (its
   default `listed_config` and the sweep's best) at 0 / 50 / 80 / 100 % union sparsity, and the
   list kernel alone; CUDA-graph replays over rotating weight copies, do_bench medians
   (helpers shared with `kernels_suite.py`);
3. writes $OUT/kernels-v4.json and prints a table last.

`--dry-run` runs it on the CPU under TRITON_INTERPRET=1 with tiny shapes (numbers meaningless).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

from kernels_suite import DRY_RUN, Plan, copy_bandwidth, make_x, rel_err, time_per_call

import torch  # noqa: E402

from dynasparse_worker.kernels import SplitKWorkspace, masked_reference, pack_projection  # noqa: E402
from dynasparse_worker.kernels.configs import KernelConfig, listed_config, pick_config  # noqa: E402
from dynasparse_worker.kernels.triton_listed import build_kept_list  # noqa: E402
from dynasparse_worker.kernels.triton_sparse import sparse_matmul_triton  # noqa: E402

THRESHOLD = 0.75
BATCHES = (1, 32)
SPARSITIES = (0.0, 0.5, 0.8, 1.0)


def check(plan: Plan, ws: SplitKWorkspace, gen: torch.Generator) -> list[dict]:
    dev, out = plan.dev, []
    cases = [(1, 4096, [4096, 1024, 1024], False), (32, 4096, [4096], False),
             (1, 4096, [2048, 2048], True), (32, 14336, [4096], False), (5, 300, [136, 40], False)]
    if dev == "cpu":
        cases = [(1, 48, [32], False), (3, 64, [32, 32], True)]
    for rows, k, outs, gated in cases:
        for split in (1, 3):
            w = [torch.randn(n, k, device=dev, generator=gen).to(torch.bfloat16) / math.sqrt(k)
                 for n in outs]
            pw = pack_projection(w, gated=gated, workspace=ws)
            scale = 0.5 + torch.rand(k, device=dev, generator=gen)
            thr = torch.full((), 0.8, device=dev)
            cfg = KernelConfig(**{**listed_config(rows, pw.out_features, gated).__dict__,
                                  "split_k": split})
            errs = []
            for _ in range(4):
                x = torch.randn(rows, k, device=dev, generator=gen).to(torch.bfloat16)
                y = torch.full((rows, pw.out_features), float("nan"), device=dev,
                               dtype=torch.bfloat16)
                sparse_matmul_triton(x, pw, thr, scale, out=y, config=cfg)
                errs.append(rel_err(y, masked_reference(x, pw, thr, scale)))
            ok = max(errs) < 1.5e-2 and int(ws.accum.count_nonzero()) == 0
            out.append(dict(rows=rows, k=k, outs=outs, gated=gated, split=split,
                            max_rel_err=max(errs), ok=ok))
            print(("ok  " if ok else "FAIL"), out[-1], flush=True)
    return out


def sweep_configs(rows: int, n: int, gated: bool) -> list[KernelConfig]:
    base = listed_config(rows, n, gated)
    found = [base]
    tiles = [(32, 128, 1), (64, 128, 1), (128, 128, 4)] if rows == 1 else [
        (64, 64, 2), (128, 64, 1)]
    for bn, bk, split in tiles:
        if gated and split > 1:
            continue
        cfg = KernelConfig(block_n=bn, block_k=bk, split_k=split, num_warps=4, num_stages=3,
                           dot=rows > 1, listed=True)
        if cfg not in found:
            found.append(cfg)
    return found


def group(plan: Plan, name: str, k: int, outs: list[int], gated: bool, ws, gen) -> list[dict]:
    dev, rows_out = plan.dev, []
    n_total = sum(outs)
    bytes_w = k * n_total * 2
    copies = max(2, math.ceil(250e6 / bytes_w)) if plan.graphs else 1
    w = [torch.randn(n, k, device=dev, generator=gen).to(torch.bfloat16) / math.sqrt(k)
         for n in outs]
    pws = [pack_projection([t.clone() for t in w], gated=gated, workspace=ws) for _ in range(copies)]
    w_lin = [p.w_t.t().contiguous() for p in pws]  # nn.Linear layout
    thr = torch.full((), THRESHOLD, device=dev)
    n_out = pws[0].out_features
    for rows in BATCHES:
        buf = torch.empty(rows, n_out, device=dev, dtype=torch.bfloat16)
        dense_buf = torch.empty(rows, n_total, device=dev, dtype=torch.bfloat16)
        call = lambda xx, c: [lambda p=p: sparse_matmul_triton(  # noqa: E731
            xx, p, thr, out=buf, config=c) for p in pws]
        x50 = make_x(rows, k, 0.5, gen)
        sweep = {}
        for cfg in sweep_configs(rows, n_out, gated):
            try:
                sweep[cfg] = time_per_call(call(x50, cfg), plan)
            except Exception as exc:  # a config that fails to compile must not cost the run
                print(f"config {cfg} failed: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
        best = min(sweep, key=sweep.get)
        v3 = pick_config(rows, k, n_out, gated)
        dense = min(time_per_call([lambda p=p: torch.mm(x50, p.w_t, out=dense_buf) for p in pws], plan),
                    time_per_call([lambda w=w: torch.mm(x50, w.t(), out=dense_buf) for w in w_lin], plan))
        counts = ws.row_counts[:1]
        list_us = time_per_call([lambda: build_kept_list(x50, thr, thr, False, ws.rows, counts)],
                                plan)
        for s in SPARSITIES:
            x = make_x(rows, k, s, gen)
            kept = int((x.float().abs() > THRESHOLD).any(0).sum())
            row = dict(group=name, batch=rows, sparsity=s, union_kept=kept / k, dense_us=dense,
                       v3_us=time_per_call(call(x, v3), plan),
                       v4_us=time_per_call(call(x, listed_config(rows, n_out, gated)), plan),
                       v4_best_us=time_per_call(call(x, best), plan),
                       v4_best_config=best.__dict__, list_only_us=list_us,
                       sweep_50={f"bn{c.block_n}/bk{c.block_k}/s{c.split_k}": t
                                 for c, t in sweep.items()})
            read = kept * n_total * 2
            row["v4_best_tbps"] = read / row["v4_best_us"] / 1e6
            rows_out.append(row)
            print(f"{name:8} B={rows:<3} s={s:.2f} dense {dense:7.1f} v3 {row['v3_us']:7.1f} "
                  f"v4 {row['v4_us']:7.1f} v4best {row['v4_best_us']:7.1f} "
                  f"({dense / row['v4_best_us']:.2f}x) list {list_us:.1f}", flush=True)
    del pws, w_lin
    if plan.graphs:
        torch.cuda.empty_cache()
    return rows_out


def main() -> int:
    dry = "--dry-run" in sys.argv
    plan = DRY_RUN if dry else Plan()
    gen = torch.Generator(device=plan.dev).manual_seed(0)
    ws = SplitKWorkspace.allocate(plan.dev, **plan.workspace)
    t0 = time.time()
    result: dict = dict(device=torch.cuda.get_device_name() if not dry else "cpu (dry run)")
    result["correctness"] = check(plan, ws, gen)
    if not dry:
        result["copy_gbps"] = copy_bandwidth()
    rows = []
    for name, (k, outs, gated) in plan.shapes.items():
        rows += group(plan, name, k, outs, gated, ws, gen)
    result["rows"] = rows
    layer = {}
    for b in BATCHES:
        for s in SPARSITIES:
            sel = [r for r in rows if r["batch"] == b and r["sparsity"] == s]
            layer[f"b{b}_s{s}"] = {key: sum(r[key] for r in sel)
                                   for key in ("dense_us", "v3_us", "v4_us", "v4_best_us")}
    result["layer"] = layer
    result["seconds"] = time.time() - t0
    out_dir = os.environ.get("OUT", "/tmp/kernels-v4")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "kernels-v4.json"), "w") as f:
        json.dump(result, f, indent=1)
    print("per layer (us):  dense / v3 / v4 / v4 best")
    for key, v in layer.items():
        print(f"{key:10} {v['dense_us']:7.1f} {v['v3_us']:7.1f} {v['v4_us']:7.1f} "
              f"{v['v4_best_us']:7.1f}  v4best {v['dense_us'] / v['v4_best_us']:.2f}x")
    bad = [c for c in result["correctness"] if not c["ok"]]
    print(f"correctness: {len(result['correctness']) - len(bad)}/{len(result['correctness'])} ok; "
          f"{result['seconds']:.0f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
