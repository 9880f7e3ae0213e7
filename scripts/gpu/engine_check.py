"""GPU correctness checks for the engine (run on the device machine by scripts/gpu/engine_suite.sh).

1. Kernels vs their torch references on random bf16 data: split-K decode attention, fused
   add+RMSNorm, RoPE+cache write, SiLU·up (relative error / fraction of elements off by > 1 ulp).
2. Token agreement with Hugging Face in bf16 on random weights of a real shape: 10 prompts, 256
   greedy tokens each from the engine (batched, CUDA graphs); HF scores the same sequences
   (teacher-forced) and we count positions where HF's argmax equals the engine's token. Random
   weights give flat logits, so we also report agreement up to bf16-level near-ties (HF margin
   between its top token and ours < 0.05 logits) and the first position where free-running greedy
   outputs differ.

Usage: PYTHONPATH=worker:proto:operator:. python3 scripts/gpu/engine_check.py --shape llama3-1b --json out.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from dynasparse_worker.engine import Engine, EngineConfig
from dynasparse_worker.engine import attention, fused
from dynasparse_worker.engine.types import SamplingParams
from dynasparse_worker.models.shapes import SHAPES


def build(shape: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(SHAPES[shape])
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    torch.manual_seed(0)
    with torch.device("cuda"):
        return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()


def _rel(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def kernel_checks() -> dict:
    torch.manual_seed(1)
    dev, bf = "cuda", torch.bfloat16
    out = {}
    q = torch.randn(5, 32, 128, device=dev, dtype=bf)  # [B, H, D]
    kc = torch.randn(6, 300, 8, 128, device=dev, dtype=bf)  # [S, T, Hkv, D]
    vc = torch.randn_like(kc)
    slots = torch.tensor([5, 0, 2, 3, 1], device=dev)
    lens = torch.tensor([1, 64, 65, 299, 300], device=dev)
    starts = torch.tensor([0, 0, 10, 200, 280], device=dev)
    for name, st in (("decode_attention", None), ("decode_attention_window", starts)):
        ref = attention.decode_attention_torch(q, kc, vc, slots, lens, st, 0.088)
        for splits in (1, 4):
            got = attention.decode_attention(q, kc, vc, slots, lens, st, 0.088, splits)
            out[f"{name}_splits{splits}"] = _rel(got, ref)
    x, d = torch.randn(7, 4096, device=dev, dtype=bf), torch.randn(7, 4096, device=dev, dtype=bf)
    w = torch.randn(4096, device=dev, dtype=bf)
    a = fused.add_rms_norm(d, x, w, 1e-5, use_triton=False)
    b = fused.add_rms_norm(d, x, w, 1e-5, use_triton=True)
    out["add_rms_norm_mismatch"] = float((a[0] != b[0]).float().mean())
    out["add_residual_mismatch"] = float((a[1] != b[1]).float().mean())
    qkv = torch.randn(7, 48 * 128, device=dev, dtype=bf)
    cos, sin = torch.randn(64, 128, device=dev, dtype=bf), torch.randn(64, 128, device=dev, dtype=bf)
    pos, sl = torch.randint(0, 64, (7,), device=dev), torch.randint(0, 4, (7,), device=dev)
    results = []
    for use in (False, True):
        kc2, vc2 = torch.zeros(4, 64, 8, 128, device=dev, dtype=bf), torch.zeros(4, 64, 8, 128, device=dev, dtype=bf)
        results.append((fused.rope_and_cache(qkv, cos, sin, pos, sl, kc2, vc2, 32, 8, 128, use_triton=use), kc2, vc2))
    out["rope_q_mismatch"] = float((results[0][0] != results[1][0]).float().mean())
    out["rope_k_cache_mismatch"] = float((results[0][1] != results[1][1]).float().mean())
    out["rope_v_cache_mismatch"] = float((results[0][2] != results[1][2]).float().mean())
    gu = torch.randn(7, 2 * 14336, device=dev, dtype=bf)
    out["silu_mul_mismatch"] = float((fused.silu_mul(gu, use_triton=False) != fused.silu_mul(gu, use_triton=True)).float().mean())
    return out


@torch.inference_mode()
def agreement(model, prompts: int = 10, gen: int = 256, free_running: int = 1,
              prompt_ids: list[list[int]] | None = None, device: str = "cuda",
              noise_floor: bool = False) -> dict:
    """Random-token prompts unless `prompt_ids` are given (real text for a trained model).

    `noise_floor`: also score the same sequences with HF's eager attention (the model's own
    implementation, usually sdpa, is the reference): how often two HF bf16 forwards that differ
    only in the attention kernel disagree is the floor any engine's agreement sits on."""
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(7)
    ids = prompt_ids or [torch.randint(0, vocab, (int(n),), generator=g).tolist()
                         for n in torch.randint(16, 64, (prompts,), generator=g)]
    prompts = len(ids)
    engine = Engine(model, None, EngineConfig(max_batch_size=16, max_seq_len=512,
                                              kv_memory_fraction=0.2, batch_buckets=(1, 2, 4, 8, 16)))
    for i, p in enumerate(ids):
        engine.add_request(str(i), p, SamplingParams(max_tokens=gen, ignore_eos=True))
    outputs: dict[str, list[int]] = {str(i): [] for i in range(prompts)}
    started = time.perf_counter()
    while engine.has_work():
        for e in engine.step():
            outputs[e.request_id].extend(e.token_ids)
    engine_s = time.perf_counter() - started
    import copy

    ref32 = copy.deepcopy(model).float()  # the precision-neutral judge of both bf16 runs
    strict = near = total = engine_vs_fp32 = hf_vs_fp32 = 0
    for i, p in enumerate(ids):
        got = torch.tensor(outputs[str(i)], device=device)  # [gen]
        seq = torch.tensor([p + outputs[str(i)][:-1]], device=device)  # [1, P + gen - 1]
        logits = model(input_ids=seq).logits[0, len(p) - 1:].float()  # [gen, V]
        top = logits.argmax(-1)  # [gen]
        margin = logits.max(-1).values - logits.gather(-1, got[:, None]).squeeze(-1)  # [gen]
        top32 = ref32(input_ids=seq).logits[0, len(p) - 1:].argmax(-1)  # [gen]
        engine_vs_fp32 += int((top32 == got).sum())
        hf_vs_fp32 += int((top32 == top).sum())
        strict += int((top == got).sum())
        near += int((margin < 0.05).sum())
        total += gen
    del ref32
    if device == "cuda":
        torch.cuda.empty_cache()
    floor = {}
    if noise_floor:
        try:
            floor = _noise_floor(model, ids, outputs, gen, device)
        except Exception as exc:  # keep the main result if switching attention fails
            floor = {"noise_floor_error": f"{type(exc).__name__}: {exc}"}
    diverge = []
    for i in range(free_running):
        p = ids[i]
        hf = model.generate(input_ids=torch.tensor([p], device=device), max_new_tokens=gen,
                            min_new_tokens=gen, do_sample=False, pad_token_id=0)[0, len(p):].tolist()
        same = [a == b for a, b in zip(hf, outputs[str(i)])]
        diverge.append(same.index(False) if False in same else gen)
    return {"prompts": prompts, "gen_tokens": gen, "strict_agreement": strict / total,
            "agreement_within_0.05_logit": near / total,
            "engine_bf16_vs_fp32_teacher_forced": engine_vs_fp32 / total,
            "hf_bf16_vs_fp32_teacher_forced": hf_vs_fp32 / total, "free_running_first_divergence": diverge,
            "engine_seconds": engine_s, **floor}


@torch.inference_mode()
def _noise_floor(model, ids: list[list[int]], outputs: dict[str, list[int]], gen: int,
                 device: str) -> dict:
    """Teacher-forced argmax of HF with its default attention vs HF with the other one (eager)."""
    default = model.config._attn_implementation
    other = "eager" if default != "eager" else "sdpa"
    tops = {}
    for impl in (default, other):
        model.set_attn_implementation(impl)
        tops[impl] = [model(input_ids=torch.tensor([p + outputs[str(i)][:-1]], device=device))
                      .logits[0, len(p) - 1:].argmax(-1) for i, p in enumerate(ids)]  # [gen] each
    model.set_attn_implementation(default)
    total = gen * len(ids)
    engine = [torch.tensor(outputs[str(i)], device=device) for i in range(len(ids))]
    same = lambda a, b: sum(int((x == y).sum()) for x, y in zip(a, b)) / total  # noqa: E731
    return {"hf_attention": default,
            f"hf_{default}_vs_hf_{other}_teacher_forced": same(tops[default], tops[other]),
            f"engine_vs_hf_{other}_teacher_forced": same(engine, tops[other])}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", action="append", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    report = {"kernels": kernel_checks()}
    print(json.dumps(report["kernels"], indent=1), flush=True)
    for shape in args.shape or ["llama3-1b"]:
        model = build(shape)
        report[shape] = agreement(model)
        print(shape, json.dumps(report[shape]), flush=True)
        del model
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
