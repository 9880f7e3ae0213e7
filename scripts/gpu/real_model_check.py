"""Token agreement of the engine with Hugging Face on the *trained* default model, on the GPU in bf16.

Random weights give flat logits where bf16 rounding alone flips argmaxes (scripts/gpu/results/NOTES.md),
so issue 3's 99 % agreement target is judged here on SmolLM2-135M-Instruct: the GGUF travels to the
device machine in two pieces (it is larger than one call may carry) and is loaded with the same
`load_model` the worker uses. 10 chat prompts x 256 greedy tokens, teacher-forced scoring by HF.

Usage (device machine): PYTHONPATH=worker:proto:operator:. python3 scripts/gpu/real_model_check.py GGUF --json out.json
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
    args = parser.parse_args()

    from dynasparse_worker.models.loading import load_model

    import importlib.util
    spec = importlib.util.spec_from_file_location("engine_check", Path(__file__).with_name("engine_check.py"))
    engine_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(engine_check)

    loaded = load_model(str(args.gguf), device="cuda")  # bf16 on CUDA
    model = loaded.model.eval()
    tok = loaded.tokenizer
    ids = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                   tokenize=True) for p in PROMPTS]
    ids = [list(x["input_ids"]) if hasattr(x, "keys") else list(x) for x in ids]
    report = engine_check.agreement(model, gen=args.gen, free_running=3, prompt_ids=ids)
    report["model"] = loaded.name
    print(json.dumps(report, indent=1), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
