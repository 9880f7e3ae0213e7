"""Fixtures for the gated-model tests: tiny random models of several families, and the real default
model loaded once per session (tests that need it are marked `slow`). No network (HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(2)


def tiny_config(family: str, vocab_size: int = 256):
    """A small random config of `family` (llama, mistral, qwen2, qwen3, gemma2, gemma3)."""
    import transformers

    common = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    if family == "llama":
        return transformers.LlamaConfig(**common)
    if family == "mistral":
        return transformers.MistralConfig(**common, sliding_window=None)
    if family == "qwen2":
        return transformers.Qwen2Config(**common)
    if family == "qwen3":
        return transformers.Qwen3Config(**common, head_dim=8)
    if family == "gemma2":
        return transformers.Gemma2Config(**common, head_dim=8)
    if family == "gemma3":
        return transformers.Gemma3TextConfig(**common, head_dim=8)
    raise ValueError(family)


def tiny_model(family: str = "llama", seed: int = 0, vocab_size: int = 256):
    import transformers

    torch.manual_seed(seed)
    config = tiny_config(family, vocab_size)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    return model.eval()


@pytest.fixture
def make_tiny():
    """Factory fixture: `make_tiny(family="llama", seed=0, vocab_size=256)` → a tiny random model."""
    return tiny_model


@pytest.fixture(scope="session")
def default_model():
    """The real SmolLM2-135M-Instruct, loaded once (dequantized and cached on first use)."""
    from dynasparse_worker.models import load_model

    return load_model("default")
