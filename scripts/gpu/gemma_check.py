"""Gemma 2 / Gemma 3 in the engine on the GPU: greedy tokens vs Hugging Face, decode through CUDA graphs.

Tiny random configs that exercise everything Gemma adds (sliding windows the prompts outrun, Gemma 2's
attention and final soft-caps, Gemma 3's second RoPE table and q/k norms, a head_dim that is not a
power of two, which takes the torch attention/RoPE fallback inside the graphs), with the (1 + w) norm
weights randomised. Per config and dtype: the engine's greedy tokens for a few prompts decoded
together, against HF's own greedy loop (forward + its KV cache, EOS not suppressed), and HF's
teacher-forced argmax on the engine's sequences. float32 should agree exactly (up to near-ties);
bfloat16 on random weights only up to rounding at near-ties, so the top-2 margins are reported too.
A gated run (Gemma 2 at budget 0.35 of a synthetic plan table: width gates and skipped halves, one
graph per depth plan, default sparse-kernel ops) checks the plan against the gated HF model.

Usage: PYTHONPATH=worker:proto:operator:. python3 scripts/gpu/gemma_check.py --json out.json
       (--device cpu --gen 4 for a quick CPU smoke run)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dynasparse_worker.engine import Engine, EngineConfig
from dynasparse_worker.engine.types import SamplingParams

SIZES = dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=251, max_position_embeddings=512, query_pre_attn_scalar=48)
CONFIGS = {
    "gemma2": ("gemma2", dict(num_hidden_layers=4, head_dim=64, sliding_window=16,
                              attn_logit_softcapping=5.0, final_logit_softcapping=4.0)),
    "gemma3": ("gemma3_text", dict(num_hidden_layers=4, head_dim=64, sliding_window=16,
                                   rope_local_base_freq=100.0,
                                   layer_types=["sliding_attention", "sliding_attention",
                                                "full_attention", "sliding_attention"])),
    "gemma3_head48": ("gemma3_text", dict(num_hidden_layers=3, head_dim=48, sliding_window=12,
                                          layer_types=["sliding_attention", "full_attention",
                                                       "sliding_attention"])),
}


def build(family: str, extra: dict, device: str, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(family, **{**SIZES, **extra})
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.normal_(0.0, 0.3)
    return model.to(device=device, dtype=dtype)


@torch.inference_mode()
def hf_greedy(model, prompt: list[int], n: int, device: str) -> list[int]:
    ids, past, out = torch.tensor([prompt], device=device), None, []
    for _ in range(n):
        res = model(input_ids=ids, past_key_values=past, use_cache=True)
        past = res.past_key_values
        out.append(int(res.logits[0, -1].argmax()))
        ids = torch.tensor([[out[-1]]], device=device)
    return out


def engine_tokens(engine: Engine, prompts: list[list[int]], gen: int) -> list[list[int]]:
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt, SamplingParams(max_tokens=gen, ignore_eos=True))
    out: dict[str, list[int]] = {str(i): [] for i in range(len(prompts))}
    while engine.has_work():
        for event in engine.step():
            out[event.request_id].extend(event.token_ids)
    return [out[str(i)] for i in range(len(prompts))]


@torch.inference_mode()
def compare(model, got: list[list[int]], prompts: list[list[int]], gen: int, device: str) -> dict:
    exact = strict = near = total = 0
    diverge, margins = [], []
    for prompt, tokens in zip(prompts, got):
        ref = hf_greedy(model, prompt, gen, device)
        same = [a == b for a, b in zip(ref, tokens)]
        diverge.append(same.index(False) if False in same else gen)
        exact += int(ref == tokens)
        seq = torch.tensor([prompt + tokens[:-1]], device=device)
        logits = model(input_ids=seq).logits[0, len(prompt) - 1:].float()  # [gen, V]
        chosen = torch.tensor(tokens, device=device)  # [gen]
        strict += int((logits.argmax(-1) == chosen).sum())
        gap = logits.max(-1).values - logits.gather(-1, chosen[:, None]).squeeze(-1)  # [gen]
        near += int((gap < 0.05).sum())  # HF's own top token or within a near-tie of it
        top2 = logits.topk(2, dim=-1).values  # [gen, 2]
        margins.append(float((top2[:, 0] - top2[:, 1]).min()))
        total += gen
    return {"sequences_identical": exact, "sequences": len(prompts),
            "teacher_forced_agreement": strict / total,
            "teacher_forced_within_0.05_logit": near / total, "first_divergence": diverge,
            "min_top2_margin_per_prompt": margins}


def check(name: str, dtype: torch.dtype, device: str, gen: int, prompts: list[list[int]]) -> dict:
    family, extra = CONFIGS[name]
    model = build(family, extra, device, dtype)
    started = time.perf_counter()
    engine = Engine(model, None, EngineConfig(max_batch_size=8, max_seq_len=256,
                                              kv_memory_fraction=0.05, kv_capacity_tokens=2048,
                                              max_prefill_tokens=16, batch_buckets=(1, 2, 4, 8)))
    build_s = time.perf_counter() - started
    got = engine_tokens(engine, prompts, gen)
    report = compare(model, got, prompts, gen, device)
    report.update(graphs=len(engine.runner.graphs), captures=engine.runner.captures,
                  engine_build_seconds=build_s, last_variant=str(engine.runner.last_variant))
    return report


def gated_check(device: str, gen: int, prompts: list[list[int]]) -> dict:
    """Gemma 2 under a gated plan at budget 0.35 of a synthetic calibrated table (width thresholds
    and skipped halves; the engine, built after calibration, captures a graph per depth plan) with
    the default gated ops (sparse kernels on CUDA), against the gated HF model under that plan."""
    from dynasparse_worker.gating import install_gates
    from dynasparse_worker.gating.synthetic_plan import synthetic_table

    family, extra = CONFIGS["gemma2"]
    model = build(family, extra, device, torch.float32)
    gated = install_gates(model)
    synthetic_table(gated, gated.half_bytes(), [0.6, 0.35], SIZES["vocab_size"], torch.device(device))
    engine = Engine(gated, None, EngineConfig(max_batch_size=8, max_seq_len=256,
                                              kv_memory_fraction=0.05, kv_capacity_tokens=2048,
                                              max_prefill_tokens=16, batch_buckets=(1, 2, 4, 8)))
    runner = engine.runner
    # one prompt at a time: prefill and decode then read the same plan bucket (0), the one the
    # HF reference runs with
    alone = lambda: [engine_tokens(engine, [p], gen)[0] for p in prompts]  # noqa: E731
    gated.set_budget(1.0)
    dense = alone()
    gated.set_budget(0.35)
    got = alone()
    variant = runner.last_variant
    gated.state.select_bucket(0)
    report = compare(gated.model, got, prompts, gen, device)
    report.update(graphs=len(runner.graphs), captures=runner.captures,
                  gated_variant=str(variant), decoded_by_graph=variant in runner.graphs,
                  plan_changed_tokens=dense != got)
    return report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--gen", type=int, default=48)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, SIZES["vocab_size"], (int(n),), generator=g).tolist()
               for n in torch.randint(10, 40, (args.prompts,), generator=g)]
    report: dict = {"device": args.device, "gen_tokens": args.gen,
                    "prompt_lens": [len(p) for p in prompts]}
    if args.device == "cuda":
        report["gpu"] = torch.cuda.get_device_name()
    for name in CONFIGS:
        for dtype in (torch.float32, torch.bfloat16):
            key = f"{name}_{str(dtype).removeprefix('torch.')}"
            try:
                report[key] = check(name, dtype, args.device, args.gen, prompts)
            except Exception as exc:  # one failing config must not hide the others' results
                report[key] = {"error": f"{type(exc).__name__}: {exc}"}
            print(key, json.dumps(report[key]), flush=True)
            _write(args.json, report)  # a timeout later still leaves these results
    try:
        report["gemma2_gated_float32"] = gated_check(args.device, args.gen, prompts)
    except Exception as exc:
        report["gemma2_gated_float32"] = {"error": f"{type(exc).__name__}: {exc}"}
    print("gemma2_gated_float32", json.dumps(report["gemma2_gated_float32"]), flush=True)
    _write(args.json, report)


def _write(path: str | None, report: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
