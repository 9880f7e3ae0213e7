"""Where a batch-1 decode step of the gated engine spends its GPU time, per budget (issue 4).

Llama-3-8B shape, random bf16 weights, the synthetic plan of `dynasparse bench --shape` (width
only at batch 1). Eager steps (no CUDA graph, so the profiler sees every kernel): per budget, the
kernel time per decode step grouped by kernel, and the union sparsity each projection group really
sees at decode against the width the plan targets (a threshold quantile from prefill-like passes).
Run on the device machine from the repository root: `python3 scripts/gpu/profile_b1.py --out
$OUT/profile-b1.json`; `--shape tiny --device cpu` is the dry run here.
"""

from __future__ import annotations

import argparse
import collections
import json

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="llama3-8b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--budgets", default="1.0,0.75,0.5,0.3")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", default="profile-b1.json")
    parser.add_argument("--force-sparse", action="store_true", help="sparse kernel for every group")
    args = parser.parse_args()
    from dynasparse_worker.benchmarks.engine_bench import load_for_bench
    from dynasparse_worker.engine import Engine, EngineConfig
    from dynasparse_worker.engine.types import SamplingParams
    from dynasparse_worker.gating import install_gates
    from dynasparse_worker.gating.synthetic_plan import synthetic_table
    from dynasparse_worker.sparsity import GROUP_NAMES, MLP_IN, keep_mask

    device = torch.device(args.device)
    model, _, name, _ = load_for_bench(args.shape, None, device)
    gated = install_gates(model)
    budgets = [float(b) for b in args.budgets.split(",")]
    vocab = model.config.vocab_size
    synthetic_table(gated, gated.half_bytes(), budgets, vocab, device, None)
    engine = Engine(gated, None, EngineConfig(max_batch_size=1, max_seq_len=256, kv_capacity_tokens=256,
                                              cuda_graphs=False, batch_buckets=(1,)))
    ops = engine.runner.gated_ops
    seen: dict[int, list[float]] = collections.defaultdict(list)
    modes: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    recording = [False]
    original = ops.project

    def project(x, weight, bias, layer, group, bucket):
        if recording[0]:
            threshold, scale = ops.gate(bucket, layer, group)
            skipped = ~keep_mask(x, threshold, scale)  # [N, in]
            seen[group].append(float(skipped.all(0).float().mean()))
            modes[group][ops.policy(x.shape[0], GROUP_NAMES[group])] += 1
        return original(x, weight, bias, layer, group, bucket)

    ops.project = project
    if args.force_sparse:  # time the sparse kernel at every width, crossover or not
        ops.policy = lambda rows, group: "sparse"
    for each in (ops, engine.runner.dense_ops):  # device time per projection group, both paths
        inner = each.project

        def annotated(x, weight, bias, layer, group, bucket, inner=inner):
            with torch.profiler.record_function(f"group/{GROUP_NAMES[group]}"):
                return inner(x, weight, bias, layer, group, bucket)

        each.project = annotated
    fused = getattr(ops, "project_gated", None)
    if fused is not None:  # gate|up with SiLU·up in the kernel: the same group, and its sparsity

        def annotated_gated(x, gate_up, act, layer, bucket):
            if recording[0]:
                threshold, scale = ops.gate(bucket, layer, MLP_IN)
                skipped = ~keep_mask(x, threshold, scale)  # [N, in]
                seen[MLP_IN].append(float(skipped.all(0).float().mean()))
            with torch.profiler.record_function("group/mlp_in"):
                return fused(x, gate_up, act, layer, bucket)

        ops.project_gated = annotated_gated
    report = dict(model=name, device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                  budgets={})
    generator = torch.Generator().manual_seed(0)
    for budget in budgets:
        engine.apply_budget(budget)
        prompt = torch.randint(0, vocab, (128,), generator=generator).tolist()
        engine.add_request(f"r{budget}", prompt, SamplingParams(max_tokens=args.steps + 4, ignore_eos=True))
        engine.step()  # prefill
        engine.step()  # warm decode
        seen.clear()
        modes.clear()
        recording[0] = True
        engine.step()
        recording[0] = False
        plan = engine.runner.current_plan()
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
            torch.cuda.synchronize()
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(args.steps):
                engine.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
        while engine.has_work():
            engine.step()
        kernels = collections.Counter()
        groups = {}
        for event in prof.key_averages():
            if event.key.startswith("group/"):
                t = getattr(event, "device_time_total", 0.0) if device.type == "cuda" else event.cpu_time_total
                groups[event.key[6:]] = round(t / args.steps / len(gated.structure.blocks), 2)
            t = getattr(event, "device_time_total", 0.0) if device.type == "cuda" else event.self_cpu_time_total
            if t > 0 and (device.type != "cuda" or getattr(event, "device_type", None) is not None):
                kernels[event.key[:90]] += t / args.steps
        entry = dict(
            width_target=plan.width_sparsity[0] if plan else 0.0,
            union_sparsity={GROUP_NAMES[g]: sum(v) / len(v) for g, v in sorted(seen.items())},
            kernel_choice={GROUP_NAMES[g]: dict(c) for g, c in sorted(modes.items())},
            kernel_us_per_step={k: round(v, 1) for k, v in kernels.most_common(14)},
            group_us_per_layer=groups,
        )
        report["budgets"][str(budget)] = entry
        print(budget, json.dumps(entry, indent=1), flush=True)
    with open(args.out, "w") as handle:
        json.dump(report, handle, indent=1)


if __name__ == "__main__":
    main()
