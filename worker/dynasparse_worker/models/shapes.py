"""Real models' shapes with random weights: speed does not depend on the values.

`SHAPES` names the architectures `dynasparse bench --shape NAME` and `dynasparse serve --model
shape:NAME` build; `random_model(name, device)` makes one (bf16 on CUDA, fp32 on the CPU) and
`load_shape(name, device)` wraps it as a `LoadedModel` with the default model's tokenizer (or the
one in `$DYNASPARSE_SHAPE_TOKENIZER`, a directory), so a GPU without model files can serve it.
The output rows of token ids the tokenizer does not know (and of its special tokens) are zeroed, so
greedy decoding picks tokens that print; every row is still read, so the step costs the same.
Called by `models.loading`, `benchmarks.engine_bench` and the serving benchmark.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

_LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
SHAPES: dict[str, dict] = {
    "llama3-8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336,
                      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                      vocab_size=128256, max_position_embeddings=8192,
                      rope_parameters={"rope_type": "default", "rope_theta": 500000.0}),
    "llama3-1b": dict(model_type="llama", hidden_size=2048, intermediate_size=8192,
                      num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                      head_dim=64, vocab_size=128256, tie_word_embeddings=True,
                      max_position_embeddings=131072, rope_parameters=_LLAMA3_ROPE),
    "qwen3-0.6b": dict(model_type="qwen3", hidden_size=1024, intermediate_size=3072,
                       num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                       head_dim=128, vocab_size=151936, tie_word_embeddings=True,
                       max_position_embeddings=40960),
    "smollm2-135m": dict(model_type="llama", hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=8192,
                         rope_parameters={"rope_type": "default", "rope_theta": 100000.0}),
    "tiny": dict(model_type="llama", hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                 max_position_embeddings=4096),
}
SHAPE_PREFIX = "shape:"


def random_model(name: str, device: Any) -> Any:
    """A randomly initialised HF causal LM of shape `name` on `device`, in eval mode."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from dynasparse_worker.errors import UserError

    if name not in SHAPES:
        raise UserError(f"unknown shape {name!r}: pass one of {', '.join(sorted(SHAPES))}")
    spec = dict(SHAPES[name])
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def load_shape(name: str, device: Any) -> Any:
    """`LoadedModel` of random weights of shape `name` with a real tokenizer (see module docstring)."""
    from transformers import AutoTokenizer

    from dynasparse_worker.models.loading import LoadedModel, default_model_dir

    model = random_model(name, device)
    directory = os.environ.get("DYNASPARSE_SHAPE_TOKENIZER") or str(default_model_dir())
    tokenizer = AutoTokenizer.from_pretrained(directory)
    _print_only_known_tokens(model, tokenizer)
    model.generation_config.eos_token_id = None  # random weights: no token means "the end"
    return LoadedModel(model, tokenizer, f"{SHAPE_PREFIX}{name}", f"shape-{name}", Path(directory),
                       synthetic=True)


def _print_only_known_tokens(model: Any, tokenizer: Any) -> None:
    head = model.get_output_embeddings().weight.data  # [V, hidden]
    known = min(len(tokenizer), head.shape[0])
    if model.config.tie_word_embeddings:
        return  # the rows are the input embeddings too: leave them
    head[known:].zero_()
    special = [i for i in tokenizer.all_special_ids if i < known]
    if special:
        head[special] = 0
