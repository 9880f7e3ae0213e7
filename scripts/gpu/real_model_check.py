"""Token agreement of the engine with Hugging Face on the *trained* default model, on the GPU in bf16.

Random weights give flat logits where bf16 rounding alone flips argmaxes (scripts/gpu/results/NOTES.md),
so issue 3's 99 % agreement target is judged here on SmolLM2-135M-Instruct: the GGUF travels to the
device machine in two pieces (it is larger than one call may carry) and is loaded with the same
`load_model` the worker uses. 10 chat prompts x 256 greedy tokens, teacher-forced scoring by HF.

Two references beside it say how much of the gap is bf16 itself:
* noise floor: HF scored twice, with its default attention (sdpa) and with eager attention — two
  HF bf16 forwards of the same sequences whose only difference is the attention kernel;
* decode path: the engine at batch 1 (one CUDA graph of batch 1) against HF stepping the same
  tokens through its own KV cache one at a time (`--decode-path-prompts`), so both sides run the
  same matrix shapes: M = the prompt at prefill, M = 1 per decode step. The batched, teacher-forced
  comparison above instead sets M=16 graph GEMMs against one M=P+gen HF forward, whose different
  summation orders round differently at near-ties;
* last (CUDA), the batched comparison again with cuBLAS's reduced-precision bf16 split-K
  reductions off (they may only touch the small-M decode GEMMs): does the engine gain on fp32?

Usage (device machine): PYTHONPATH=worker:proto:operator:. python3 scripts/gpu/real_model_check.py GGUF --json out.json
       (CPU smoke run: --device cpu --gen 4 --decode-path-prompts 1)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


PROMPTS = [
    "What is the capital of France?", "Write a short poem about the sea.",
    "Explain photosynthesis to a child.", "Give three tips for a job interview.",
    "What causes rain?", "Describe the taste of a lemon.", "How do magnets work?",
    "Summarize the plot of Romeo and Juliet.", "Why is exercise good for you?",
    "List five animals that live in the Arctic.",
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("gguf", type=Path)
    parser.add_argument("--json", default=None)
    parser.add_argument("--gen", type=int, default=256)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--decode-path-prompts", type=int, default=2)
    parser.add_argument("--free-running", type=int, default=3)
    args = parser.parse_args()

    from dynasparse_worker.models.loading import load_model

    import importlib.util
    spec = importlib.util.spec_from_file_location("engine_check", Path(__file__).with_name("engine_check.py"))
    engine_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(engine_check)

    dtype = torch.bfloat16  # the dtype the target is set in, on the CPU smoke run too
    loaded = load_model(str(args.gguf), device=args.device, dtype=dtype)
    model = loaded.model.eval()
    tok = loaded.tokenizer
    ids = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                   tokenize=True) for p in PROMPTS]
    ids = [list(x["input_ids"]) if hasattr(x, "keys") else list(x) for x in ids]
    report = engine_check.agreement(model, gen=args.gen, free_running=args.free_running,
                                    prompt_ids=ids, device=args.device, noise_floor=True)
    report["model"] = loaded.name
    print(json.dumps(report, indent=1), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    try:
        report["decode_path"] = decode_path(model, ids[:args.decode_path_prompts], args.gen,
                                            args.device)
    except Exception as exc:  # the agreement above is already written
        report["decode_path"] = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps({"decode_path": report["decode_path"]}, indent=1), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    if args.device == "cuda":  # are the small-M decode GEMMs' split-K bf16 reductions a cost?
        matmul = torch.backends.cuda.matmul
        matmul.allow_bf16_reduced_precision_reduction = False
        try:
            exact = engine_check.agreement(model, gen=args.gen, free_running=0, prompt_ids=ids)
            keys = ("strict_agreement", "engine_bf16_vs_fp32_teacher_forced",
                    "hf_bf16_vs_fp32_teacher_forced")
            report["no_bf16_reduced_precision_reduction"] = {k: exact[k] for k in keys}
        except Exception as exc:
            report["no_bf16_reduced_precision_reduction"] = {"error": f"{type(exc).__name__}: {exc}"}
        matmul.allow_bf16_reduced_precision_reduction = True
        print(json.dumps({k: report[k] for k in ("no_bf16_reduced_precision_reduction",)}), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))


@torch.inference_mode()
def decode_path(model, prompts: list[list[int]], gen: int, device: str) -> dict:
    """Engine at batch 1 vs HF stepping the engine's tokens through its KV cache (same shapes)."""
    from dynasparse_worker.engine import Engine, EngineConfig
    from dynasparse_worker.engine.types import SamplingParams

    engine = Engine(model, None, EngineConfig(max_batch_size=1, max_seq_len=512,
                                              kv_memory_fraction=0.05, batch_buckets=(1,)))
    agree = total = 0
    diverge = []
    for prompt in prompts:
        engine.add_request("r", prompt, SamplingParams(max_tokens=gen, ignore_eos=True))
        got: list[int] = []
        while engine.has_work():
            got.extend(t for e in engine.step() for t in e.token_ids)
        ids, past, tops = torch.tensor([prompt], device=device), None, []
        for token in got:  # teacher-forced: HF's argmax at each step, fed the engine's token
            res = model(input_ids=ids, past_key_values=past, use_cache=True)
            past = res.past_key_values
            tops.append(int(res.logits[0, -1].argmax()))
            ids = torch.tensor([[token]], device=device)
        same = [a == b for a, b in zip(tops, got)]
        agree += sum(same)
        total += len(got)
        diverge.append(same.index(False) if False in same else len(got))
    return {"prompts": len(prompts), "engine_batch1_vs_hf_decode_steps": agree / max(1, total),
            "first_disagreement": diverge}


if __name__ == "__main__":
    main()
