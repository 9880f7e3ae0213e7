"""CPU micro-benchmark of the input-sparse path on the default model's shapes (issue 4, item 4).

    python3 -m dynasparse_worker.kernels.cpu_bench [--layers 30] [--threads 2] [--dtype float32]

Times one decode step's projections (q|k|v, o, gate|up with SiLU, down) over `--layers` layers of
SmolLM2-135M shapes (hidden 576, intermediate 1536, 9 q / 3 kv heads of 64) at batch 1 (or
`--batch`, each token with its own random mask): the fp32
dense path (`x @ W_t`), the engine's own dense step (`F.linear` on `[out, in]` weights, what budget
1.0 runs: slower than `x @ W_t` at batch 1 on MKL), the dense path of weights packed in `--dtype`,
and `sparse_matmul_torch` on those at several per-token sparsities (activations stay fp32).
Distinct weights per layer, so they stream from memory as in a real step. Prints medians of
interleaved repeats; `--clock cpu` times the thread's CPU time, which a loaded shared machine
disturbs less than wall time. Who calls it: a developer, by hand.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dynasparse_worker.kernels import dense_matmul, pack_projection, sparse_matmul_torch

# (name, in, outs, gated) for one SmolLM2-135M layer
GROUPS = [("qkv", 576, [576, 192, 192], False), ("o", 576, [576], False),
          ("gate_up", 576, [1536, 1536], True), ("down", 1536, [576], False)]


def _inputs(k: int, sparsity: float, gen: torch.Generator, dtype: torch.dtype, batch: int = 1):
    """Tokens whose |x| is under 0.75 on their own random `sparsity` share of channels."""
    mag = 1.0 + torch.rand(batch, k, generator=gen)  # [B, K]
    for b in range(batch):
        skip = torch.randperm(k, generator=gen)[: int(round(sparsity * k))]
        mag[b, skip] = 0.7 * torch.rand(skip.numel(), generator=gen)
    sign = torch.randint(0, 2, (batch, k), generator=gen) * 2 - 1
    return (mag * sign).to(dtype)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--sparsities", default="0,0.25,0.5,0.65")
    ap.add_argument("--batch", type=int, default=1, help="tokens, each with its own mask")
    ap.add_argument("--clock", default="wall", choices=["wall", "cpu"])
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(0)
    fp32 = [[pack_projection([torch.randn(n, k, generator=gen) for n in outs], gated=g)
             for _, k, outs, g in GROUPS] for _ in range(args.layers)]
    layers = [[pack_projection([pw.w_t.t()], dtype=dtype) if not pw.gated else pack_projection(
        list(pw.w_t.t().chunk(2)), gated=True, dtype=dtype) for pw in groups] for groups in fp32]
    thr = torch.tensor(0.75)
    sparsities = [float(s) for s in args.sparsities.split(",")]
    xs = {s: [_inputs(k, s, gen, torch.float32, args.batch) for _, k, _, _ in GROUPS]
          for s in sparsities}

    def dense_fp32_step():
        for groups in fp32:
            for pw, x in zip(groups, xs[sparsities[0]]):
                dense_matmul(x, pw)

    linear = [[pw.w_t.t().contiguous() for pw in groups] for groups in fp32]  # [out, in] each

    def engine_dense_step():
        for weights in linear:
            for w, x in zip(weights, xs[sparsities[0]]):
                torch.nn.functional.linear(x, w)

    def dense_step():
        for groups in layers:
            for pw, x in zip(groups, xs[sparsities[0]]):
                dense_matmul(x, pw)

    def sparse_step(s):
        def run():
            for groups in layers:
                for pw, x in zip(groups, xs[s]):
                    sparse_matmul_torch(x, pw, thr)
        return run

    cases = {"dense": dense_fp32_step, "F.linear": engine_dense_step,
             f"dense_{args.dtype}": dense_step} | {
        f"sparse@{s:g}": sparse_step(s) for s in sparsities}
    times: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():
        fn()  # warm-up
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    for _ in range(args.repeats):  # interleaved, so load from other processes hits all alike
        for name, fn in cases.items():
            t0 = clock()
            fn()
            times[name].append(clock() - t0)
    med = {name: 1e3 * statistics.median(v) for name, v in times.items()}
    low = {name: 1e3 * min(v) for name, v in times.items()}
    print(f"{args.layers} layers, batch {args.batch}, {args.dtype}, {args.threads} threads, "
          f"{args.clock} clock: ms/step median (min), speed-up over the fp32 dense step")
    for name, ms in med.items():
        print(f"  {name:16s} {ms:8.2f} ({low[name]:7.2f}) ms   {med['dense'] / ms:5.2f}x"
              f" ({low['dense'] / low[name]:4.2f}x)")
    return med


if __name__ == "__main__":
    main()
