"""Engine test fixtures: a tiny random Llama (fast) and the real default model (loaded once)."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)  # the CI box has 2 shared cores; 1 thread avoids spin contention


@pytest.fixture(scope="session")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=97,
                         max_position_embeddings=512, eos_token_id=96)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def default_model():
    from dynasparse_worker.models import load_model

    return load_model("default")
